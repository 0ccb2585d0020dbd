// Admission and back-pressure, in one place: who may call (bearer token), whether the server
// takes calls (draining), and how many image requests it holds at once. A request is refused
// here, before its image is decoded or anything is allocated for it.
//
// Thread model: every method is safe from any thread; gRPC callbacks call it and never block.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"

namespace anoclip::server {

struct AdmissionOptions {
  std::string auth_token;   // empty: no authentication
  int max_in_flight = 512;  // image requests admitted and not yet answered, over all calls
};

class Admission {
 public:
  // Holds one unit of a counter until destroyed. Move-only.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept : owner_(other.owner_), counter_(other.counter_) { other.owner_ = nullptr; }
    Slot& operator=(Slot&& other) noexcept;
    ~Slot() { Release(); }
    void Release();

   private:
    friend class Admission;
    Slot(Admission* owner, int Admission::*counter) : owner_(owner), counter_(counter) {}
    Admission* owner_ = nullptr;
    int Admission::*counter_ = nullptr;
  };

  static absl::StatusOr<std::unique_ptr<Admission>> Create(const AdmissionOptions& options);

  // A new call: UNAUTHENTICATED without the right token ("authorization: Bearer T", scheme
  // case-insensitive), UNAVAILABLE while draining. The slot counts the call until it ends.
  absl::StatusOr<Slot> AdmitCall(const grpc::ServerContextBase& context);
  // One image request of an admitted call: RESOURCE_EXHAUSTED when max_in_flight are held.
  absl::StatusOr<Slot> AdmitRequest();

  void BeginDrain();
  bool draining() const;
  int calls() const;
  int requests() const;
  // Waits until no call is open and none has arrived or ended for `quiet`, or until `timeout`
  // passes; true when quiet. Callers that were refused during a drain have by then stopped sending, so
  // gRPC's own shutdown (which answers CANCELLED) meets no new call.
  bool WaitForQuiet(absl::Duration quiet, absl::Duration timeout) const;

 private:
  explicit Admission(AdmissionOptions options) : options_(std::move(options)) {}
  void Decrement(int Admission::*counter);

  const AdmissionOptions options_;
  mutable absl::Mutex mutex_;
  bool draining_ ABSL_GUARDED_BY(mutex_) = false;
  int calls_ ABSL_GUARDED_BY(mutex_) = 0;
  int requests_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Time last_arrival_ ABSL_GUARDED_BY(mutex_) = absl::InfinitePast();
  absl::Time last_call_end_ ABSL_GUARDED_BY(mutex_) = absl::InfinitePast();
};

// The token of an "authorization" value: "Bearer <token>" with the scheme in any case and
// spaces around; empty when the value is not a bearer credential.
std::string BearerToken(absl::string_view authorization);

}  // namespace anoclip::server
