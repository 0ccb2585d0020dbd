#include "eval/progress.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace anoclip::eval {

Progress::Progress(int64_t total, bool terminal, std::ostream& out)
    : total_(std::max<int64_t>(total, 0)), terminal_(terminal), out_(out) {}

double Progress::Elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string Progress::Status() const {
  const double elapsed = Elapsed();
  const double rate = elapsed > 0 ? done_ / elapsed : 0;
  const std::string eta = rate > 0 ? FormatDuration((total_ - done_) / rate) : "?";
  return absl::StrFormat("%d/%d images (%.0f%%), %.2f images/s, ETA %s", done_, total_,
                         total_ > 0 ? 100.0 * done_ / total_ : 100.0, rate, eta);
}

void Progress::Advance(int64_t done, const std::string& label) {
  done_ = std::min(total_, done_ + done);
  label_ = label;
  if (terminal_) {
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done_ / total_) : kWidth;
    out_ << "\r[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] " << Status() << "  "
         << label_ << "\033[K" << std::flush;
    return;
  }
  // Plain lines: one each time another tenth of the work is done.
  if (total_ == 0) return;
  const int tenth = static_cast<int>(10 * done_ / total_);
  if (tenth >= next_tenth_) {
    next_tenth_ = tenth + 1;
    out_ << "eval: " << Status() << " (" << label_ << ")\n" << std::flush;
  }
}

void Progress::Finish() {
  if (terminal_) out_ << "\n";
  out_ << absl::StrFormat("eval: scored %d images in %s\n", done_, FormatDuration(Elapsed())) << std::flush;
}

}  // namespace anoclip::eval
