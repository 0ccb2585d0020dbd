// `anoclip`: the engine on the command line (detect, calibrate, make-test-model, bench).
#include <exception>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/blas_info.h"

namespace {

constexpr char kUsage[] =
    "usage: anoclip <command> [flags]   (anoclip <command> --help for its flags)\n"
    "  detect           score one image of a class: anomaly score, heatmap, regions\n"
    "  calibrate        fit a label-free calibration from defect-free images of a class\n"
    "  make-test-model  write seeded random weights in the OpenCLIP layout (tests, benchmarks)\n"
    "  bench            time the vision and text towers and test-time adaptation\n";

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<int(const std::vector<std::string>&)>> commands = {
      {"detect", anoclip::cli::RunDetectCommand},
      {"calibrate", anoclip::cli::RunCalibrateCommand},
      {"make-test-model", anoclip::cli::RunMakeTestModelCommand},
      {"bench", anoclip::cli::RunBenchCommand},
  };
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    std::cerr << kUsage;
    return argc < 2 ? 2 : 0;
  }
  auto command = commands.find(argv[1]);
  if (command == commands.end()) {
    std::cerr << "anoclip: unknown command " << argv[1] << "\n" << kUsage;
    return 2;
  }
  anoclip::LogBlasAtStartup("anoclip");
  try {
    return command->second(std::vector<std::string>(argv + 2, argv + argc));
  } catch (const std::exception& error) {
    std::cerr << "anoclip " << argv[1] << ": " << error.what() << "\n";
    return 1;
  }
}
