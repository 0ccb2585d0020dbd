// Admission and back-pressure on their own; the worker pool surviving what its tasks throw, its
// hooks, and the OpenMP teams of threads other than the engine's.
#include "server/admission.h"

#include <grpcpp/grpcpp.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <filesystem>

#include <atomic>
#include <stdexcept>
#include <thread>

#include "absl/time/clock.h"
#include "server/openmp_threads.h"
#include "server/worker_pool.h"

namespace anoclip::server {
namespace {

TEST(AdmissionTest, BearerSchemeIsCaseInsensitive) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("bearer abc"), "abc");
  EXPECT_EQ(BearerToken("BEARER   abc  "), "abc");
  EXPECT_EQ(BearerToken("Basic abc"), "");
  EXPECT_EQ(BearerToken("Bearerabc"), "");
  EXPECT_EQ(BearerToken("Bearer"), "");
}

TEST(AdmissionTest, RequestsBeyondTheBoundAreResourceExhaustedAndSlotsAreReturned) {
  auto admission = Admission::Create({"", 2}).value();
  auto a = admission->AdmitRequest();
  auto b = admission->AdmitRequest();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(admission->AdmitRequest().status().code(), absl::StatusCode::kResourceExhausted);
  a->Release();
  EXPECT_EQ(admission->requests(), 1);
  {
    auto c = admission->AdmitRequest();
    EXPECT_TRUE(c.ok());
    EXPECT_EQ(admission->requests(), 2);
  }
  EXPECT_EQ(admission->requests(), 1) << "a slot is returned when it goes out of scope";
  Admission::Slot moved = std::move(b).value();
  EXPECT_EQ(admission->requests(), 1) << "moving a slot does not return it";
}

TEST(AdmissionTest, DrainingRefusesWithUnavailableAndWaitsForOpenCalls) {
  auto admission = Admission::Create({"", 8}).value();
  auto slot = std::make_unique<Admission::Slot>(admission->AdmitRequest().value());
  admission->BeginDrain();
  EXPECT_EQ(admission->AdmitRequest().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(admission->WaitForQuiet(absl::ZeroDuration(), absl::Milliseconds(1)))
      << "requests alone do not hold a drain; calls do";
  EXPECT_EQ(Admission::Create({"", 0}).status().code(), absl::StatusCode::kInvalidArgument);
}

// A call that arrived long ago and ends during the drain: its caller may send the next call as
// soon as it has the answer, so the quiet spell counts from the call's end, not its arrival.
// (Counting from the arrival let gRPC shut down as the answer went out, and the caller's next call
// got CANCELLED, which clients do not retry, instead of UNAVAILABLE.)
TEST(AdmissionTest, QuietSpellCountsFromTheLastCallsEnd) {
  auto admission = Admission::Create({"", 8}).value();
  grpc::ServerContext context;
  auto call = admission->AdmitCall(context);
  ASSERT_TRUE(call.ok());
  admission->BeginDrain();
  EXPECT_EQ(admission->AdmitCall(context).status().code(), absl::StatusCode::kUnavailable);
  const absl::Duration quiet = absl::Milliseconds(200);
  absl::SleepFor(quiet + absl::Milliseconds(100));  // the call runs longer than the quiet spell
  const absl::Time end = absl::Now();
  call->Release();
  EXPECT_TRUE(admission->WaitForQuiet(quiet, absl::Seconds(30)));
  EXPECT_GE(absl::Now() - end, quiet);
}

TEST(WorkerPoolTest, ATaskThatThrowsDoesNotStopThePool) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool(2);
    pool.Post([] { throw std::runtime_error("boom"); });
    pool.Post([] { throw 42; });
    for (int i = 0; i < 10; ++i) pool.Post([&] { ++ran; });
  }  // the destructor runs what is queued, then joins
  EXPECT_EQ(ran, 10);
}

TEST(WorkerPoolTest, QueuedTasksRunBeforeTheDestructorReturns) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool(1);
    pool.Post([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ++ran;
    });
    for (int i = 0; i < 5; ++i) pool.Post([&] { ++ran; });
  }
  EXPECT_EQ(ran, 6);
}

TEST(WorkerPoolTest, HooksRunOnEveryThreadAndAfterEveryTask) {
  std::atomic<int> started{0}, ran{0}, after{0};
  {
    WorkerPool pool(3, {[&] { ++started; }, [&] { ++after; }});
    for (int i = 0; i < 7; ++i) pool.Post([&] { ++ran; });
    pool.Post([] { throw std::runtime_error("boom"); });  // the hook runs after a throw as well
  }
  EXPECT_EQ(started, 3);
  EXPECT_EQ(ran, 7);
  EXPECT_EQ(after, 8);
}

int ThreadsOfThisProcess() {
  return static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/task"),
                                        std::filesystem::directory_iterator()));
}

// A thread made serial runs libtorch's parallel loops on itself; a thread that releases its team
// lets the team's idle threads exit.
TEST(OpenMpThreadsTest, SerialThreadsStartNoTeamAndReleasedTeamsExit) {
  at::set_num_threads(2);
  const int before = ThreadsOfThisProcess();
  std::thread([&] {
    RunTorchSeriallyOnThisThread();
    EXPECT_EQ(at::get_num_threads(), 1);
    std::atomic<int> chunks{0};
    at::parallel_for(0, 1 << 20, 1, [&](int64_t, int64_t) { ++chunks; });
    EXPECT_EQ(chunks, 1);  // the whole range in one call, on this thread
    EXPECT_EQ(ThreadsOfThisProcess(), before + 1);
  }).join();
  std::thread([&] {
    at::parallel_for(0, 1 << 20, 1, [](int64_t, int64_t) {});
    EXPECT_EQ(ThreadsOfThisProcess(), before + 2);  // this thread and its team's second thread
    ReleaseOpenMpTeam();
    for (int i = 0; i < 200 && ThreadsOfThisProcess() > before + 1; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(ThreadsOfThisProcess(), before + 1);
  }).join();
  EXPECT_EQ(at::get_num_threads(), 2);  // the main thread's count is untouched
}

}  // namespace
}  // namespace anoclip::server
