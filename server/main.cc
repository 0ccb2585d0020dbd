// anoclip-server: serves anoclip.v1.AnomalyDetection until SIGTERM/SIGINT, then drains.
#include <pthread.h>
#include <signal.h>

#include <iostream>

#include "common/blas_info.h"
#include "server/anoclip_server.h"
#include "server/server_config.h"

int main(int argc, char** argv) {
  anoclip::RestartWithBestBlasKernels(argv);
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const auto& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::cout << anoclip::server::ServerUsage();
      return 0;
    }
    if (arg == "--help-markdown") {
      std::cout << anoclip::server::ServerFlagsMarkdown();
      return 0;
    }
    if (arg == "--version") {
      std::cout << "anoclip-server " << anoclip::server::kServerVersion << "\n";
      return 0;
    }
  }
  auto config = anoclip::server::ParseServerConfig(args);
  if (!config.ok()) {
    std::cerr << "anoclip-server: " << config.status().message() << "\n(anoclip-server --help lists every flag)\n";
    return 2;
  }
  // Every thread started from here on inherits the mask; this thread takes the signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  anoclip::LogBlasAtStartup("anoclip-server");
  auto server = anoclip::server::AnoclipServer::Start(*config);
  if (!server.ok()) {
    std::cerr << "anoclip-server: " << server.status().message() << "\n";
    return server.status().GetPayload(anoclip::server::kModelErrorPayload).has_value() ? 3 : 1;
  }
  std::cerr << "anoclip-server: serving on port " << (*server)->grpc_port() << ", metrics on port "
            << (*server)->metrics_port() << std::endl;
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::cerr << "anoclip-server: signal " << signal_number << ", draining (up to " << config->drain_timeout_s
            << " s)" << std::endl;
  (*server)->Drain(absl::Seconds(config->drain_timeout_s));
  std::cerr << "anoclip-server: drained" << std::endl;
  return 0;
}
