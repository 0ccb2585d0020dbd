#include "client/loadtest.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/numbers.h"
#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/requests.h"
#include "common/status_macros.h"

namespace anoclip::client {
namespace {

using Clock = std::chrono::steady_clock;
using Stub = anoclip::v1::AnomalyDetectionService::Stub;

constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();

struct Phase {
  absl::Duration duration;
  int64_t limit = kUnbounded;         // requests
  int64_t first_index = 0;            // of the whole run, for the mix and the TTA share
  LoadRecorder* recorder = nullptr;   // null: warm-up, not recorded
};

// One worker's Inspect stream, opened on first use.
class WorkerStream {
 public:
  WorkerStream(Stub& stub, const ConnectionOptions& connection, absl::Duration phase)
      : stub_(stub), connection_(connection), phase_(phase) {}
  ~WorkerStream() {
    if (stream_ != nullptr && !broken_) {
      stream_->WritesDone();
      stream_->Finish();
    }
  }

  // One request over the stream; code and message of the answer.
  std::pair<int, std::string> Send(const anoclip::v1::DetectRequest& request) {
    if (stream_ == nullptr) {
      // The stream lives for the whole phase; each answer is still bounded by the deadline
      // counted from the end of the phase.
      context_.set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(phase_) +
                            std::chrono::milliseconds(connection_.deadline_ms));
      if (!connection_.token.empty()) context_.AddMetadata("authorization", "Bearer " + connection_.token);
      context_.set_wait_for_ready(connection_.wait_for_ready);
      stream_ = stub_.Inspect(&context_);
    }
    anoclip::v1::InspectRequest inspect;
    *inspect.mutable_detect() = request;
    anoclip::v1::InspectResponse response;
    if (!stream_->Write(inspect) || !stream_->Read(&response)) {
      broken_ = true;
      const grpc::Status status = stream_->Finish();
      if (status.ok()) return {static_cast<int>(grpc::StatusCode::UNAVAILABLE), "the stream ended early"};
      return {static_cast<int>(status.error_code()), status.error_message()};
    }
    return {response.error().code(), response.error().message()};
  }
  bool broken() const { return broken_; }

 private:
  Stub& stub_;
  const ConnectionOptions& connection_;
  absl::Duration phase_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<anoclip::v1::InspectRequest, anoclip::v1::InspectResponse>> stream_;
  bool broken_ = false;
};

struct PhaseOutcome {
  double seconds = 0;  // wall time
  int64_t sent = 0;
};

// Runs one phase to its end.
PhaseOutcome RunPhase(const std::vector<std::unique_ptr<Stub>>& stubs, const ConnectionOptions& connection,
                const LoadOptions& options, const std::vector<anoclip::v1::DetectRequest>& requests,
                const Phase& phase) {
  const auto start = Clock::now();
  const auto end = start + absl::ToChronoNanoseconds(phase.duration);
  std::optional<ArrivalSchedule> schedule;
  if (options.rps > 0) schedule.emplace(options.rps, options.poisson, options.seed + static_cast<uint64_t>(phase.first_index));
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> sent{0};

  auto worker = [&](int w) {
    Stub& stub = *stubs[static_cast<size_t>(w) % stubs.size()];
    WorkerStream stream(stub, connection, phase.duration);
    while (true) {
      int64_t index = 0;
      Clock::time_point due = Clock::now();
      if (schedule) {
        const auto arrival = schedule->Next();
        index = arrival.index;
        due = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival.offset));
        if (index >= phase.limit || due >= end) break;
        std::this_thread::sleep_until(due);
      } else {
        index = next.fetch_add(1);
        if (index >= phase.limit || due >= end) break;
      }
      const int64_t global = phase.first_index + index;
      anoclip::v1::DetectRequest request = requests[static_cast<size_t>(global) % requests.size()];
      request.set_request_id(std::to_string(global));
      if (TtaSelected(global, options.tta_share)) request.mutable_options()->set_tta(true);

      sent.fetch_add(1);
      std::pair<int, std::string> answer;
      if (options.stream) {
        answer = stream.Send(request);
      } else {
        grpc::ClientContext context;
        PrepareContext(context, connection);
        anoclip::v1::DetectResponse response;
        const grpc::Status status = stub.Detect(&context, request, &response);
        answer = {static_cast<int>(status.error_code()), status.error_message()};
      }
      if (phase.recorder != nullptr) {
        phase.recorder->Record(answer.first, answer.second,
                               std::chrono::duration<double>(Clock::now() - due).count());
      }
      if (stream.broken()) break;  // this worker's stream is gone; the others go on
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(options.concurrency));
  for (int w = 0; w < options.concurrency; ++w) workers.emplace_back(worker, w);
  for (auto& t : workers) t.join();
  return {std::chrono::duration<double>(Clock::now() - start).count(), sent.load()};
}

}  // namespace

ArrivalSchedule::ArrivalSchedule(double rate, bool poisson, uint64_t seed)
    : rate_(rate), poisson_(poisson), rng_(seed), gap_(rate > 0 ? rate : 1.0) {}

ArrivalSchedule::Arrival ArrivalSchedule::Next() {
  absl::MutexLock lock(&mutex_);
  const int64_t index = count_++;
  if (!poisson_) return {index, static_cast<double>(index) / rate_};  // computed, not summed: no drift
  const double offset = t_;
  t_ += gap_(rng_);
  return {index, offset};
}

std::vector<double> ArrivalOffsets(double rate, int64_t count, bool poisson, uint64_t seed) {
  std::vector<double> offsets;
  if (!(rate > 0) || count <= 0) return offsets;
  offsets.reserve(static_cast<size_t>(count));
  ArrivalSchedule schedule(rate, poisson, seed);
  for (int64_t i = 0; i < count; ++i) offsets.push_back(schedule.Next().offset);
  return offsets;
}

bool TtaSelected(int64_t index, double share) {
  if (!(share > 0)) return false;
  if (share >= 1) return true;
  const double i = static_cast<double>(index);
  return std::floor((i + 1) * share) > std::floor(i * share);
}

absl::StatusOr<absl::Duration> ParseDurationFlag(const std::string& flag, const std::string& text) {
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds) && std::isfinite(seconds)) return absl::Seconds(seconds);
  absl::Duration duration;
  if (absl::ParseDuration(text, &duration)) return duration;
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be a duration such as 30s, 2m or 1m30s (a bare ",
                                                 "number is seconds); was \"", text, "\""));
}

absl::StatusOr<std::vector<int>> ParseConcurrencyRange(const std::string& text) {
  const std::vector<std::string> parts = absl::StrSplit(text, ':');
  int a = 0, b = 0, step = 1;
  if (parts.size() < 2 || parts.size() > 3 || !absl::SimpleAtoi(parts[0], &a) || !absl::SimpleAtoi(parts[1], &b) ||
      (parts.size() == 3 && !absl::SimpleAtoi(parts[2], &step)) || a < 1 || b < a || b > 1024 || step < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--concurrency-range must be A:B[:STEP] with 1 <= A <= B <= 1024 and STEP >= 1; was ", text));
  }
  std::vector<int> steps;
  for (int c = a; c <= b; c += step) steps.push_back(c);
  return steps;
}

absl::StatusOr<std::vector<anoclip::v1::ClassSpec>> ParseClassMix(const std::string& text) {
  std::vector<anoclip::v1::ClassSpec> classes;
  for (absl::string_view entry : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::vector<std::string> parts = absl::StrSplit(entry, ':');
    if (parts.size() > 2 || parts[0].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("a class is NAME or NAME:object|texture; got '", entry, "'"));
    }
    anoclip::v1::ClassSpec spec;
    spec.set_name(parts[0]);
    if (parts.size() == 2) {
      auto kind = KindFromName(parts[1], absl::StrCat("the class kind in '", entry, "'"));
      if (!kind.ok()) return kind.status();
      spec.set_kind(*kind);
    }
    classes.push_back(std::move(spec));
  }
  if (classes.empty()) return absl::InvalidArgumentError("--classes names no class");
  return classes;
}

absl::StatusOr<LoadResult> RunLoad(const ConnectionOptions& connection, const LoadOptions& options,
                                   const std::vector<anoclip::v1::DetectRequest>& requests,
                                   const std::function<absl::Status()>& on_measure_start) {
  if (requests.empty()) return absl::InvalidArgumentError("no requests to send");
  if (options.concurrency < 1 || options.connections < 1) {
    return absl::InvalidArgumentError("concurrency and connections must be at least 1");
  }
  if (options.duration <= absl::ZeroDuration()) return absl::InvalidArgumentError("the duration must be positive");
  if (options.warmup < absl::ZeroDuration()) return absl::InvalidArgumentError("the warm-up cannot be negative");
  if (options.rps < 0 || !std::isfinite(options.rps)) return absl::InvalidArgumentError("the rate must be >= 0");
  std::vector<std::unique_ptr<Stub>> stubs;
  for (int i = 0; i < options.connections; ++i) {
    ANOCLIP_ASSIGN_OR_RETURN(auto channel, MakeChannel(connection, i));
    ANOCLIP_RETURN_IF_ERROR(WaitConnected(*channel, connection));
    stubs.push_back(anoclip::v1::AnomalyDetectionService::NewStub(channel));
  }
  int64_t next_index = 0;
  if (options.warmup > absl::ZeroDuration()) {
    Phase warm{options.warmup, kUnbounded, 0, nullptr};
    next_index = RunPhase(stubs, connection, options, requests, warm).sent;
  }
  if (on_measure_start) ANOCLIP_RETURN_IF_ERROR(on_measure_start());
  LoadRecorder recorder;
  Phase measured{options.duration, options.max_requests > 0 ? options.max_requests : kUnbounded, next_index,
                 &recorder};
  const double seconds = RunPhase(stubs, connection, options, requests, measured).seconds;

  RecordedLoad load = recorder.Take();
  LoadResult result;
  result.requests = load.requests;
  result.ok = load.ok;
  result.seconds = seconds;
  result.codes = std::move(load.codes);
  result.errors = std::move(load.errors);
  result.latency = Summarize(std::move(load.latencies));
  return result;
}

}  // namespace anoclip::client
