// anoclip-client subcommands. Each takes the words after its name; exit codes: 0 success,
// 1 failure (service error, unreachable target), 2 usage error.
#pragma once

#include <string>
#include <vector>

namespace anoclip::client {

int RunHealth(const std::vector<std::string>& args);
int RunInfo(const std::vector<std::string>& args);
int RunClasses(const std::vector<std::string>& args);
int RunPrepare(const std::vector<std::string>& args);
int RunEvict(const std::vector<std::string>& args);
int RunDetect(const std::vector<std::string>& args);
int RunInspect(const std::vector<std::string>& args);
int RunLoadtest(const std::vector<std::string>& args);
int RunMakeSamples(const std::vector<std::string>& args);

}  // namespace anoclip::client
