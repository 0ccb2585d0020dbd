#include "server/admission.h"

#include <openssl/crypto.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace anoclip::server {

Admission::Slot& Admission::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = other.owner_;
    counter_ = other.counter_;
    other.owner_ = nullptr;
  }
  return *this;
}

void Admission::Slot::Release() {
  if (owner_ != nullptr) owner_->Decrement(counter_);
  owner_ = nullptr;
}

absl::StatusOr<std::unique_ptr<Admission>> Admission::Create(const AdmissionOptions& options) {
  if (options.max_in_flight < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_in_flight must be positive; was ", options.max_in_flight));
  }
  return std::unique_ptr<Admission>(new Admission(options));
}

std::string BearerToken(absl::string_view authorization) {
  absl::string_view value = absl::StripAsciiWhitespace(authorization);
  constexpr absl::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() || !absl::StartsWithIgnoreCase(value, kScheme) ||
      !absl::ascii_isspace(static_cast<unsigned char>(value[kScheme.size()]))) {
    return "";
  }
  return std::string(absl::StripAsciiWhitespace(value.substr(kScheme.size())));
}

absl::StatusOr<Admission::Slot> Admission::AdmitCall(const grpc::ServerContextBase& context) {
  if (!options_.auth_token.empty()) {
    {
      absl::MutexLock lock(&mutex_);
      last_arrival_ = absl::Now();
    }
    const auto& metadata = context.client_metadata();
    auto it = metadata.find("authorization");
    const std::string token =
        it == metadata.end() ? "" : BearerToken(absl::string_view(it->second.data(), it->second.size()));
    const std::string& expected = options_.auth_token;
    const bool ok = token.size() == expected.size() && CRYPTO_memcmp(token.data(), expected.data(), expected.size()) == 0;
    if (!ok) return absl::UnauthenticatedError("missing or wrong bearer token");
  }
  absl::MutexLock lock(&mutex_);
  last_arrival_ = absl::Now();
  if (draining_) return absl::UnavailableError("the server is draining; retry on another replica");
  ++calls_;
  return Slot(this, &Admission::calls_);
}

absl::StatusOr<Admission::Slot> Admission::AdmitRequest() {
  absl::MutexLock lock(&mutex_);
  if (draining_) return absl::UnavailableError("the server is draining; retry on another replica");
  if (requests_ >= options_.max_in_flight) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server holds ", options_.max_in_flight, " requests (--max-in-flight); retry later"));
  }
  ++requests_;
  return Slot(this, &Admission::requests_);
}

void Admission::Decrement(int Admission::*counter) {
  absl::MutexLock lock(&mutex_);
  --(this->*counter);
  if (counter == &Admission::calls_) last_call_end_ = absl::Now();
}

void Admission::BeginDrain() {
  absl::MutexLock lock(&mutex_);
  draining_ = true;
}

bool Admission::draining() const {
  absl::MutexLock lock(&mutex_);
  return draining_;
}

int Admission::calls() const {
  absl::MutexLock lock(&mutex_);
  return calls_;
}

int Admission::requests() const {
  absl::MutexLock lock(&mutex_);
  return requests_;
}

bool Admission::WaitForQuiet(absl::Duration quiet, absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::Time quiet_from;
    {
      absl::MutexLock lock(&mutex_);
      auto idle = [this]() { return calls_ == 0; };
      if (!mutex_.AwaitWithDeadline(absl::Condition(&idle), deadline)) return false;
      // From the latest arrival or end of a call: a caller whose call was answered just now may
      // send its next one right away, however long ago the last call arrived.
      quiet_from = std::max(last_arrival_, last_call_end_) + quiet;
    }
    const absl::Time now = absl::Now();
    if (now >= quiet_from) return true;
    if (now >= deadline) return false;
    absl::SleepFor(std::min(quiet_from, deadline) - now);
  }
}

}  // namespace anoclip::server
