// `anoclip`: the engine on the command line. A table from subcommand name to its function;
// each subcommand parses its own flags (cli/command_support.h has the exit codes).
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "cli/command_support.h"
#include "cli/commands.h"
#include "common/allocator.h"
#include "common/blas_info.h"

namespace {

using Command = int (*)(const std::vector<std::string>&);

struct Subcommand {
  const char* name;
  Command run;
  const char* summary;
};

constexpr Subcommand kCommands[] = {
    {"detect", anoclip::cli::RunDetectCommand, "score one image of a class: anomaly score, heatmap, regions"},
    {"calibrate", anoclip::cli::RunCalibrateCommand, "fit a label-free calibration from defect-free images"},
    {"make-test-model", anoclip::cli::RunMakeTestModelCommand,
     "write seeded random weights in the OpenCLIP layout (tests, benchmarks)"},
    {"bench", anoclip::cli::RunBenchCommand, "time the vision and text towers and test-time adaptation"},
    {"eval", anoclip::cli::RunEvalCommand, "measure accuracy on labelled images (MVTec AD, VisA, a folder)"},
    {"make-dataset", anoclip::cli::RunMakeDatasetCommand, "write a synthetic labelled dataset (tests, timing)"},
};

void PrintUsage(std::ostream& out) {
  out << "usage: anoclip <command> [flags]   (anoclip <command> --help lists its flags)\n";
  for (const auto& command : kCommands) {
    out << "  " << command.name << std::string(18 - std::string(command.name).size(), ' ') << command.summary << "\n";
  }
  out << "exit status: 0 success, 1 runtime error, 2 usage error\n";
}

}  // namespace

int main(int argc, char** argv) {
  anoclip::RestartWithBestBlasKernels(argv);
  anoclip::ReuseFreedMemory();
  if (argc < 2) {
    PrintUsage(std::cerr);
    return anoclip::cli::kExitUsageError;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage(std::cout);
    return anoclip::cli::kExitOk;
  }
  for (const auto& command : kCommands) {
    if (name != command.name) continue;
    try {
      anoclip::LogBlasAtStartup("anoclip");
      return command.run(std::vector<std::string>(argv + 2, argv + argc));
    } catch (const std::exception& error) {
      std::cerr << "anoclip " << name << ": " << anoclip::cli::OneLine(error.what()) << "\n";
    } catch (...) {
      std::cerr << "anoclip " << name << ": unexpected error\n";
    }
    return anoclip::cli::kExitRuntimeError;
  }
  std::cerr << "anoclip: unknown command \"" << name << "\" (anoclip --help lists the commands)\n";
  return anoclip::cli::kExitUsageError;
}
