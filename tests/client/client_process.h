// Running the built binaries from tests: anoclip-server as a child process on loopback (port 0,
// or a given one, --ready-file), and anoclip-client / anoclip / shell commands with their output
// captured.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_util.h"

extern char** environ;

namespace anoclip::testing {

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::string ShellQuote(const std::string& s) {
  std::string quoted = "'";
  for (char c : s) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
  double seconds = 0;
};

// Runs `command` with /bin/sh, bounded by `timeout_s` (coreutils timeout: exit 124 when hit).
inline CommandResult RunShell(const std::string& command, int timeout_s = 120) {
  static int counter = 0;
  const std::string err_path = ::testing::TempDir() + "/client_cmd_stderr_" + std::to_string(getpid()) + "_" +
                               std::to_string(counter++);
  const std::string line = "timeout -k 5 " + std::to_string(timeout_s) + " sh -c " + ShellQuote(command) +
                           " 2>" + err_path + " </dev/null";
  CommandResult result;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(line.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = ReadWholeFile(err_path);
  return result;
}

// A loopback TCP port nothing listens on, below the kernel's ephemeral range, for a server that
// must come back on the same port after it died: a port from the ephemeral range (what port 0
// gives) may meanwhile become the local end of some other process's outgoing connection, and
// then cannot be bound again. 0 when none is found.
inline int FreePortOutsideEphemeralRange() {
  int low = 32768;
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  range >> low;
  if (low <= 10000) return 0;
  const int span = low - 10000;
  const int first = 10000 + static_cast<int>(getpid()) % span;  // parallel tests start apart
  for (int i = 0; i < span; ++i) {
    const int port = 10000 + (first - 10000 + i) % span;
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as gRPC binds: TIME_WAIT is no obstacle
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool free = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    close(fd);
    if (free) return port;
  }
  return 0;
}

inline CommandResult RunClient(const std::string& arguments, int timeout_s = 120) {
  return RunShell(ShellQuote(BinDir() + "/anoclip-client") + " " + arguments, timeout_s);
}

// anoclip-server as a child process. Start() waits for its ready file; the destructor sends
// SIGTERM and waits (SIGKILL after 20 s).
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> extra_flags = {}) : extra_(std::move(extra_flags)) {}
  ~ServerProcess() { Stop(); }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Empty string on success, else what went wrong (with the server's log). `grpc_port` 0 lets the
  // server pick its port.
  std::string Start(const std::string& name, int grpc_port = 0) {
    dir_ = FreshDir("server_" + name);
    const std::string ready = dir_ + "/ready.json";
    log_ = dir_ + "/server.log";
    std::vector<std::string> args = {BinDir() + "/anoclip-server",
                                     "--model", TinyModelDir(),
                                     "--vocab", VocabPath(),
                                     "--listen", "127.0.0.1:" + std::to_string(grpc_port),
                                     "--metrics-listen", "127.0.0.1:0",
                                     "--threads", "1",
                                     "--ready-file", ready,
                                     "--drain-timeout-s", "5"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    const int spawned = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
      pid_ = -1;
      return "cannot start " + args[0];
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "anoclip-server exited during start-up:\n" + ReadWholeFile(log_);
      }
      if (std::filesystem::exists(ready)) {
        auto json = nlohmann::json::parse(ReadWholeFile(ready), nullptr, false);
        if (!json.is_discarded()) {
          grpc_port_ = json.value("grpc_port", 0);
          metrics_port_ = json.value("metrics_port", 0);
          return grpc_port_ > 0 ? "" : "no grpc_port in the ready file";
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return "anoclip-server was not ready within 120 s:\n" + ReadWholeFile(log_);
  }

  // The exit status after SIGTERM (-1 if it had to be killed or was not running).
  int Stop() {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 400; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return -1;
  }

  // SIGKILL, as when a node or container dies: no drain.
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  std::string target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  std::string metrics() const { return "127.0.0.1:" + std::to_string(metrics_port_); }
  int grpc_port() const { return grpc_port_; }
  std::string log() const { return ReadWholeFile(log_); }

 private:
  std::vector<std::string> extra_;
  std::string dir_, log_;
  pid_t pid_ = -1;
  int grpc_port_ = 0, metrics_port_ = 0;
};

}  // namespace anoclip::testing
