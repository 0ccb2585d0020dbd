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

// abseil's public entry points call one another (CondVar::Wait and Mutex::LockWhen reach
// Mutex::Lock, Unlock and Await through the same exported symbols, which resolve to the
// definitions below). Only the outermost call on a thread tells TSan; nested ones go straight to
// abseil, or TSan would see a mutex locked twice or unlocked by a thread that does not hold it.
thread_local int depth = 0;
class Outermost {
 public:
  Outermost() : outermost_(depth++ == 0) {}
  ~Outermost() { --depth; }
  Outermost(const Outermost&) = delete;
  Outermost& operator=(const Outermost&) = delete;
  explicit operator bool() const { return outermost_; }

 private:
  bool outermost_;
};

unsigned ReadFlag(bool reader) { return reader ? __tsan_mutex_read_lock : 0; }

// A lock: `lock` runs abseil's implementation and returns whether the mutex is now held.
template <typename Lock>
auto AnnotatedLock(void* mu, unsigned flags, Lock lock) {
  Outermost scope;
  if (!scope) return lock();
  __tsan_mutex_pre_lock(mu, flags);
  const auto result = lock();
  __tsan_mutex_post_lock(mu, flags, 0);
  return result;
}

template <typename Unlock>
void AnnotatedUnlock(void* mu, unsigned flags, Unlock unlock) {
  Outermost scope;
  if (!scope) return unlock();
  __tsan_mutex_pre_unlock(mu, flags);
  unlock();
  __tsan_mutex_post_unlock(mu, flags);
}

// A wait releases the mutex and takes it again before returning: for TSan an unlock (whose
// release happens before whatever the waker does next) followed by a lock.
template <typename Wait>
auto AnnotatedWait(void* mu, Wait wait) {
  Outermost scope;
  if (!scope) return wait();
  __tsan_mutex_pre_unlock(mu, 0);
  const auto result = wait();
  __tsan_mutex_post_unlock(mu, 0);
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
  return result;
}

}  // namespace

// The symbol names are abseil's, in Debian's inline namespace (absl::debian3).
#define ANOCLIP_MANGLED(name) "_ZN4absl7debian3" name

namespace absl {
ABSL_NAMESPACE_BEGIN

// No __tsan_mutex_destroy: gRPC's core destroys its mutexes on whichever thread drops the last
// reference, ordered by its uninstrumented atomics, which TSan would report as a race with the
// last lock. Freeing the memory drops TSan's record of the mutex all the same, and the free is
// checked against every earlier access (except frees made inside gRPC, see tsan.supp).
Mutex::~Mutex() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5MutexD2Ev"));
  real(this);
}

// The lambdas of void functions return true so that every annotation helper has a value to pass on.
void Mutex::Lock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex4LockEv"));
  AnnotatedLock(this, 0, [&] { return real(this), true; });
}
void Mutex::ReaderLock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex10ReaderLockEv"));
  AnnotatedLock(this, ReadFlag(true), [&] { return real(this), true; });
}
bool Mutex::TryLock() {
  static auto real = Real<bool (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex7TryLockEv"));
  Outermost scope;
  if (!scope) return real(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_try_lock | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}
bool Mutex::ReaderTryLock() {
  static auto real = Real<bool (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex13ReaderTryLockEv"));
  Outermost scope;
  if (!scope) return real(this);
  const unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(this, flags);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, flags | (locked ? 0 : __tsan_mutex_try_lock_failed), 0);
  return locked;
}
void Mutex::Unlock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex6UnlockEv"));
  AnnotatedUnlock(this, 0, [&] { real(this); });
}
void Mutex::ReaderUnlock() {
  static auto real = Real<void (*)(Mutex*)>(ANOCLIP_MANGLED("5Mutex12ReaderUnlockEv"));
  AnnotatedUnlock(this, ReadFlag(true), [&] { real(this); });
}

// Lock when a condition holds: a lock, as far as TSan is concerned; the timed forms return
// with the mutex held whether or not the condition became true.
void Mutex::LockWhen(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(ANOCLIP_MANGLED("5Mutex8LockWhenERKNS0_9ConditionE"));
  AnnotatedLock(this, 0, [&] { return real(this, cond), true; });
}
void Mutex::ReaderLockWhen(const Condition& cond) {
  static auto real =
      Real<void (*)(Mutex*, const Condition&)>(ANOCLIP_MANGLED("5Mutex14ReaderLockWhenERKNS0_9ConditionE"));
  AnnotatedLock(this, ReadFlag(true), [&] { return real(this, cond), true; });
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      ANOCLIP_MANGLED("5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  return AnnotatedLock(this, 0, [&] { return real(this, cond, timeout); });
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      ANOCLIP_MANGLED("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  return AnnotatedLock(this, 0, [&] { return real(this, cond, deadline); });
}
bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      ANOCLIP_MANGLED("5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  return AnnotatedLock(this, ReadFlag(true), [&] { return real(this, cond, timeout); });
}
bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      ANOCLIP_MANGLED("5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  return AnnotatedLock(this, ReadFlag(true), [&] { return real(this, cond, deadline); });
}

// (Reader-held waits are annotated as writer-held: the project waits only under writer locks.)
void Mutex::Await(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(ANOCLIP_MANGLED("5Mutex5AwaitERKNS0_9ConditionE"));
  AnnotatedWait(this, [&] { return real(this, cond), true; });
}
bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Duration)>(
      ANOCLIP_MANGLED("5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE"));
  return AnnotatedWait(this, [&] { return real(this, cond, timeout); });
}
bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, Time)>(
      ANOCLIP_MANGLED("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE"));
  return AnnotatedWait(this, [&] { return real(this, cond, deadline); });
}

void CondVar::Wait(Mutex* mu) {
  static auto real = Real<void (*)(CondVar*, Mutex*)>(ANOCLIP_MANGLED("7CondVar4WaitEPNS0_5MutexE"));
  AnnotatedWait(mu, [&] { return real(this, mu), true; });
}
bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, Duration)>(
      ANOCLIP_MANGLED("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE"));
  return AnnotatedWait(mu, [&] { return real(this, mu, timeout); });
}
bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, Time)>(
      ANOCLIP_MANGLED("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE"));
  return AnnotatedWait(mu, [&] { return real(this, mu, deadline); });
}

ABSL_NAMESPACE_END
}  // namespace absl
