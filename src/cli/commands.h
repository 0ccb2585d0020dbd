// The `anoclip` subcommands. Each takes the words after its name and returns the exit code:
// 0 success, 1 runtime error, 2 usage error. Errors are one line on stderr.
#pragma once

#include <string>
#include <vector>

namespace anoclip::cli {

int RunDetectCommand(const std::vector<std::string>& args);
int RunMakeTestModelCommand(const std::vector<std::string>& args);
int RunCalibrateCommand(const std::vector<std::string>& args);
int RunBenchCommand(const std::vector<std::string>& args);
int RunEvalCommand(const std::vector<std::string>& args);
int RunMakeDatasetCommand(const std::vector<std::string>& args);

}  // namespace anoclip::cli
