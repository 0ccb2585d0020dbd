// ThreadSanitizer annotations for absl::Mutex and absl::CondVar, linked into the TSan test
// binaries only (scripts/sanitizers.sh). Debian's abseil is not built with TSan, so TSan cannot
// see its locks and would report every access guarded by one as a race. Each public locking
// entry point is defined here, tells TSan what it does (__tsan_mutex_*), and calls abseil's own
// implementation (found with dlsym(RTLD_NEXT)). Definitions in the executable take precedence over
// the shared library's, for the project's calls and for abseil's and gRPC's own.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"

namespace {

template <typename F>
F Real(const char* symbol) {
  void* real = dlsym(RTLD_NEXT, symbol);
  if (real == nullptr) {
    std::fprintf(stderr, "absl_mutex_tsan: %s not found\n", symbol);
    std::abort();
  }
  return reinterpret_cast<F>(real);
}

void Acquired(void* mu, bool reader) {
  __tsan_mutex_post_lock(mu, reader ? __tsan_mutex_read_lock : 0, 0);
}
// After a wait: the mutex is held again.
void Reacquired(void* mu) {
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
}
void Released(void* mu, bool reader) {
  __tsan_mutex_pre_unlock(mu, reader ? __tsan_mutex_read_lock : 0);
  __tsan_mutex_post_unlock(mu, reader ? __tsan_mutex_read_lock : 0);
}

}  // namespace

// The symbol names are abseil's, in Debian's inline namespace (absl::debian3).
#define ANOCLIP_MANGLED(name) "_ZN4absl7debian3" name

namespace absl {
ABSL_NAMESPACE_BEGIN

Mutex::~Mutex() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5MutexD2Ev"));
  __tsan_mutex_destroy(this, 0);
  real(this);
}

void Mutex::Lock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex4LockEv"));
  __tsan_mutex_pre_lock(this, 0);
  real(this);
  Acquired(this, false);
}
void Mutex::ReaderLock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex10ReaderLockEv"));
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this);
  Acquired(this, true);
}
bool Mutex::TryLock() {
  static auto real = Real<bool (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex7TryLockEv"));
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}
bool Mutex::ReaderTryLock() {
  static auto real = Real<bool (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex13ReaderTryLockEv"));
  const unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(this, flags);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, flags | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}
void Mutex::Unlock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex6UnlockEv"));
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}
void Mutex::ReaderUnlock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex12ReaderUnlockEv"));
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

// Lock when a condition holds: a lock, as far as TSan is concerned.
void Mutex::LockWhen(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(ANOCLIP_MANGLED("5Mutex8LockWhenERKNS0_9ConditionE"));
  __tsan_mutex_pre_lock(this, 0);
  real(this, cond);
  Acquired(this, false);
}
void Mutex::ReaderLockWhen(const Condition& cond) {
  static auto real =
      Real<void (*)(Mutex*, const Condition&)>(ANOCLIP_MANGLED("5Mutex14ReaderLockWhenERKNS0_9ConditionE"));
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  real(this, cond);
  Acquired(this, true);
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      ANOCLIP_MANGLED("5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  __tsan_mutex_pre_lock(this, 0);
  const bool met = real(this, cond, timeout);
  Acquired(this, false);  // held either way
  return met;
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      ANOCLIP_MANGLED("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  __tsan_mutex_pre_lock(this, 0);
  const bool met = real(this, cond, deadline);
  Acquired(this, false);
  return met;
}
bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      ANOCLIP_MANGLED("5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  const bool met = real(this, cond, timeout);
  Acquired(this, true);
  return met;
}
bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      ANOCLIP_MANGLED("5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  __tsan_mutex_pre_lock(this, __tsan_mutex_read_lock);
  const bool met = real(this, cond, deadline);
  Acquired(this, true);
  return met;
}

// Waiting releases the mutex and takes it again: an unlock then a lock. (Reader-held waits are
// annotated as writer-held: the project waits only under writer locks.)
void Mutex::Await(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(ANOCLIP_MANGLED("5Mutex5AwaitERKNS0_9ConditionE"));
  Released(this, false);
  real(this, cond);
  Reacquired(this);
}
bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      ANOCLIP_MANGLED("5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  Released(this, false);
  const bool met = real(this, cond, timeout);
  Reacquired(this);
  return met;
}
bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      ANOCLIP_MANGLED("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  Released(this, false);
  const bool met = real(this, cond, deadline);
  Reacquired(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  static auto real = Real<void (*)(CondVar*, Mutex*)>(ANOCLIP_MANGLED("7CondVar4WaitEPNS0_5MutexE"));
  Released(mu, false);
  real(this, mu);
  Reacquired(mu);
}
bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, Duration)>(
      ANOCLIP_MANGLED("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE"));
  Released(mu, false);
  const bool timed_out = real(this, mu, timeout);
  Reacquired(mu);
  return timed_out;
}
bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, Time)>(
      ANOCLIP_MANGLED("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE"));
  Released(mu, false);
  const bool timed_out = real(this, mu, deadline);
  Reacquired(mu);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
