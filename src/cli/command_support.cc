#include "cli/command_support.h"

#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

namespace anoclip::cli {

std::string OneLine(const std::string& text) {
  std::string line = absl::StrReplaceAll(text, {{"\r\n", "; "}, {"\n", "; "}, {"\r", "; "}});
  while (!line.empty() && (line.back() == ' ' || line.back() == ';')) line.pop_back();
  return line;
}

std::optional<Arguments> ParseCommandLine(const std::string& command, const std::vector<std::string>& words,
                                          const std::set<std::string>& value_flags,
                                          const std::set<std::string>& bool_flags, const char* usage,
                                          int* exit_code) {
  std::set<std::string> bools = bool_flags;
  bools.insert("help");
  auto args = Arguments::Parse(words, value_flags, bools);
  if (args.ok() && args->Flag("help")) {
    std::cout << usage;
    *exit_code = kExitOk;
    return std::nullopt;
  }
  absl::Status status = args.status();
  if (status.ok() && !args->positional().empty()) {
    status = absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", args->positional().front(),
                                                     "\" (every value follows its --flag)"));
  }
  if (!status.ok()) {
    std::cerr << "anoclip " << command << ": " << OneLine(std::string(status.message()))
              << " (anoclip " << command << " --help lists the flags)\n";
    *exit_code = kExitUsageError;
    return std::nullopt;
  }
  return std::move(args).value();
}

int ReportError(const std::string& command, const absl::Status& status, int exit_code) {
  std::cerr << "anoclip " << command << ": " << OneLine(std::string(status.message())) << "\n";
  return exit_code;
}

}  // namespace anoclip::cli
