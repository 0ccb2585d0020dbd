// Progress of a long evaluation: on a terminal one bar redrawn in place with the rate and the
// time left; otherwise plain lines at every tenth of the work, so logs stay short.
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace anoclip::eval {

class Progress {
 public:
  // `total` units of work in this run; `terminal` picks the bar.
  Progress(int64_t total, bool terminal, std::ostream& out);
  // `done` more units finished; `label` says what is being worked on.
  void Advance(int64_t done, const std::string& label);
  // Ends the bar's line and prints the totals.
  void Finish();

  // "1h02m", "4m05s", "12s".
  static std::string FormatDuration(double seconds);

 private:
  double Elapsed() const;
  std::string Status() const;

  int64_t total_, done_ = 0;
  int next_tenth_ = 1;
  bool terminal_;
  std::ostream& out_;
  std::string label_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace anoclip::eval
