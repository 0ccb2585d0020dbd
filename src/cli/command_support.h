// What every `anoclip` subcommand does the same way: parse its flags, print --help, and turn a
// failure into one line on stderr and an exit code.
//
// Exit codes: 0 success; 2 a usage error (unknown flag, missing or malformed value, a value
// out of range: anything wrong with the command line itself, found before any file is read);
// 1 a runtime error (unreadable or corrupt files, a model that does not load, ...).
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/arguments.h"

namespace anoclip::cli {

constexpr int kExitOk = 0;
constexpr int kExitRuntimeError = 1;
constexpr int kExitUsageError = 2;

// `text` on one line: line breaks become "; " and trailing whitespace is dropped, so an error
// stays one line even when a library's message spans several.
std::string OneLine(const std::string& text);

// Parses the words after the subcommand's name. Returns the arguments, or nullopt with
// `*exit_code` set: 0 after printing `usage` for --help (every subcommand takes it), 2 after
// printing one error line for an unknown flag, a flag without its value or a stray word.
std::optional<Arguments> ParseCommandLine(const std::string& command, const std::vector<std::string>& words,
                                          const std::set<std::string>& value_flags,
                                          const std::set<std::string>& bool_flags, const char* usage,
                                          int* exit_code);

// Prints "anoclip COMMAND: MESSAGE" on one line to stderr and returns `exit_code`.
int ReportError(const std::string& command, const absl::Status& status, int exit_code);

}  // namespace anoclip::cli
