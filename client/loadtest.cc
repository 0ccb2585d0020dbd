#include "client/loadtest.h"

#include <atomic>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/prometheus_text.h"
#include "common/status_macros.h"

namespace anoclip::client {
namespace {

using Clock = std::chrono::steady_clock;

const char* CodeName(int code) {
  static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? names[code] : "UNKNOWN";
}

// What all workers record into.
struct Recorder {
  absl::Mutex mutex;
  std::vector<double> latencies ABSL_GUARDED_BY(mutex);
  std::map<std::string, int64_t> codes ABSL_GUARDED_BY(mutex);
  std::map<std::string, int64_t> errors ABSL_GUARDED_BY(mutex);
  int64_t requests ABSL_GUARDED_BY(mutex) = 0;
  bool recording ABSL_GUARDED_BY(mutex) = false;

  void Record(int code, const std::string& message, double seconds) {
    absl::MutexLock lock(&mutex);
    if (!recording) return;
    ++requests;
    ++codes[CodeName(code)];
    if (code == 0) {
      latencies.push_back(seconds);
    } else if (errors.size() < 20 || errors.count(message) > 0) {
      ++errors[message];
    }
  }
};

}  // namespace

std::vector<double> ArrivalOffsets(double rate, int64_t count, bool poisson, uint64_t seed) {
  std::vector<double> offsets;
  offsets.reserve(count);
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  double t = 0;
  for (int64_t i = 0; i < count; ++i) {
    offsets.push_back(t);
    t += poisson ? gap(rng) : 1.0 / rate;
  }
  return offsets;
}

absl::StatusOr<LoadResult> RunLoad(const ConnectionOptions& connection, const LoadOptions& options,
                                   const std::vector<anoclip::v1::DetectRequest>& requests) {
  if (requests.empty()) return absl::InvalidArgumentError("no requests to send");
  if (options.concurrency < 1 || options.connections < 1) {
    return absl::InvalidArgumentError("concurrency and connections must be positive");
  }
  if (options.duration <= absl::ZeroDuration()) return absl::InvalidArgumentError("the duration must be positive");
  std::vector<std::unique_ptr<anoclip::v1::AnomalyDetection::Stub>> stubs;
  for (int i = 0; i < options.connections; ++i) {
    ANOCLIP_ASSIGN_OR_RETURN(auto channel, MakeChannel(connection, i));
    ANOCLIP_RETURN_IF_ERROR(WaitConnected(*channel, connection));
    stubs.push_back(anoclip::v1::AnomalyDetection::NewStub(channel));
  }

  Recorder recorder;
  std::atomic<int64_t> next{0};
  const auto start = Clock::now();
  const auto warm_end = start + absl::ToChronoNanoseconds(options.warmup);
  const auto end = warm_end + absl::ToChronoNanoseconds(options.duration);
  const int64_t limit = options.max_requests > 0 ? options.max_requests : INT64_MAX;
  std::vector<double> arrivals;
  if (options.rps > 0) {
    const double seconds = absl::ToDoubleSeconds(options.warmup + options.duration);
    arrivals = ArrivalOffsets(options.rps, std::min<int64_t>(limit, static_cast<int64_t>(seconds * options.rps) + 1),
                              options.poisson, options.seed);
  }
  const int tta_every = options.tta_share > 0 ? std::max(1, static_cast<int>(std::lround(1.0 / options.tta_share))) : 0;

  auto make_request = [&](int64_t index) {
    anoclip::v1::DetectRequest request = requests[index % requests.size()];
    request.set_request_id(std::to_string(index));
    if (tta_every > 0 && index % tta_every == 0) request.mutable_options()->set_tta(true);
    return request;
  };
  std::thread warm_switch([&] {
    std::this_thread::sleep_until(warm_end);
    absl::MutexLock lock(&recorder.mutex);
    recorder.recording = true;
  });

  auto worker = [&](int w) {
    auto& stub = *stubs[w % stubs.size()];
    std::unique_ptr<grpc::ClientContext> stream_context;
    std::unique_ptr<grpc::ClientReaderWriter<anoclip::v1::DetectRequest, anoclip::v1::DetectResponse>> stream;
    if (options.stream) {
      stream_context = std::make_unique<grpc::ClientContext>();
      stream_context->set_deadline(std::chrono::system_clock::now() +
                                   absl::ToChronoNanoseconds(options.warmup + options.duration) +
                                   std::chrono::milliseconds(connection.deadline_ms));
      if (!connection.token.empty()) stream_context->AddMetadata("authorization", "Bearer " + connection.token);
      stream = stub.Inspect(stream_context.get());
    }
    while (true) {
      const int64_t index = next.fetch_add(1);
      if (index >= limit) break;
      Clock::time_point send = Clock::now();
      if (!arrivals.empty()) {
        if (index >= static_cast<int64_t>(arrivals.size())) break;
        send = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrivals[index]));
        std::this_thread::sleep_until(send);
      }
      if (Clock::now() >= end) break;
      const auto request = make_request(index);
      int code = 0;
      std::string message;
      anoclip::v1::DetectResponse response;
      if (stream) {
        if (!stream->Write(request) || !stream->Read(&response)) {
          code = static_cast<int>(grpc::UNAVAILABLE);
          message = "the stream broke";
        } else if (response.error_code() != 0) {
          code = response.error_code();
          message = response.error_message();
        }
      } else {
        grpc::ClientContext context;
        PrepareContext(context, connection);
        auto status = stub.Detect(&context, request, &response);
        code = static_cast<int>(status.error_code());
        message = status.error_message();
      }
      recorder.Record(code, message, std::chrono::duration<double>(Clock::now() - send).count());
      if (stream && code == static_cast<int>(grpc::UNAVAILABLE)) break;
    }
    if (stream) {
      stream->WritesDone();
      stream->Finish();
    }
  };
  std::vector<std::thread> workers;
  for (int w = 0; w < options.concurrency; ++w) workers.emplace_back(worker, w);
  for (auto& t : workers) t.join();
  warm_switch.detach();  // already done, or the run ended inside the warm-up
  const double elapsed = std::chrono::duration<double>(std::min(Clock::now(), end) - std::min(warm_end, Clock::now())).count();

  absl::MutexLock lock(&recorder.mutex);
  recorder.recording = false;
  LoadResult result;
  result.requests = recorder.requests;
  result.ok = recorder.codes.count("OK") ? recorder.codes["OK"] : 0;
  result.seconds = std::max(elapsed, 1e-9);
  result.codes = recorder.codes;
  result.errors = recorder.errors;
  result.latency = Summarize(recorder.latencies);
  return result;
}

ServerSplit ComputeSplit(const std::string& before_text, const std::string& after_text) {
  const auto before = ParsePrometheusText(before_text), after = ParsePrometheusText(after_text);
  auto delta = [&](const std::string& name, const std::string& filter = "") {
    return SumSeries(after, name, filter) - SumSeries(before, name, filter);
  };
  ServerSplit split;
  split.requests = delta("anoclip_requests_total", "Detect") + delta("anoclip_requests_total", "Inspect");
  auto mean = [&](const std::string& family) {
    const double count = delta(family + "_count");
    return count > 0 ? delta(family + "_sum") / count : 0.0;
  };
  split.queue_s = mean("anoclip_queue_duration_seconds");
  split.tta_s = mean("anoclip_tta_duration_seconds");
  split.postprocess_s = mean("anoclip_postprocess_duration_seconds");
  split.mean_batch = mean("anoclip_batch_size");
  // Encode time is per batch; per image it is divided by the batch size.
  split.encode_s = split.mean_batch > 0 ? mean("anoclip_encode_duration_seconds") / split.mean_batch : 0;
  return split;
}

}  // namespace anoclip::client
