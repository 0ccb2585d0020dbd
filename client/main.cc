// anoclip-client: talk to anoclip-server (health, info, classes, prepare, evict, detect,
// inspect) and load-test it.
#include <functional>
#include <iostream>
#include <map>

#include "client/commands.h"

int main(int argc, char** argv) {
  const std::map<std::string, std::function<int(const std::vector<std::string>&)>> commands = {
      {"health", anoclip::client::RunHealth},   {"info", anoclip::client::RunInfo},
      {"classes", anoclip::client::RunClasses}, {"prepare", anoclip::client::RunPrepare},
      {"evict", anoclip::client::RunEvict},     {"detect", anoclip::client::RunDetect},
      {"inspect", anoclip::client::RunInspect}, {"loadtest", anoclip::client::RunLoadtest},
      {"make-samples", anoclip::client::RunMakeSamples}};
  const char* usage =
      "usage: anoclip-client <command> [flags]   (anoclip-client <command> --help)\n"
      "  health | info | classes | prepare | evict | detect | inspect | loadtest | make-samples\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  auto command = commands.find(argv[1]);
  if (command == commands.end()) {
    std::cerr << (std::string(argv[1]) == "--help" ? "" : "anoclip-client: unknown command\n") << usage;
    return std::string(argv[1]) == "--help" ? 0 : 2;
  }
  return command->second(std::vector<std::string>(argv + 2, argv + argc));
}
