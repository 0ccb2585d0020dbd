// anoclip-server: serves anoclip.v1.AnomalyDetectionService until SIGTERM/SIGINT, then drains.
#include <pthread.h>
#include <signal.h>

#include <iostream>

#include "common/allocator.h"
#include "common/blas_info.h"
#include "server/anoclip_server.h"
#include "server/log.h"
#include "server/server_config.h"

int main(int argc, char** argv) {
  anoclip::RestartWithBestBlasKernels(argv);
  anoclip::ReuseFreedMemory();
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

  using anoclip::server::LogLine;
  anoclip::server::ConfigureLog(config->log_format == "json" ? anoclip::server::LogFormat::kJson
                                                             : anoclip::server::LogFormat::kText);
  anoclip::server::RouteLibraryLogs();
  const anoclip::BlasReport blas = anoclip::DescribeBlas();
  LogLine("info", "blas", {{"library", blas.library}, {"openblas_kernels", blas.kernels},
                           {"openblas_coretype", blas.coretype}});
  if (blas.reference) LogLine("warning", anoclip::kReferenceBlasWarning);
  auto server = anoclip::server::AnoclipServer::Start(*config);
  if (!server.ok()) {
    LogLine("error", server.status().message());
    return server.status().GetPayload(anoclip::server::kModelErrorPayload).has_value() ? 3 : 1;
  }
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  LogLine("info", "draining", {{"signal", signal_number}, {"timeout_s", config->drain_timeout_s}});
  (*server)->Drain(absl::Seconds(config->drain_timeout_s));
  LogLine("info", "drained");
  return 0;
}
