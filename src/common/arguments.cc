#include "common/arguments.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace anoclip {

absl::StatusOr<Arguments> Arguments::Parse(const std::vector<std::string>& args,
                                           const std::set<std::string>& value_flags,
                                           const std::set<std::string>& bool_flags) {
  Arguments parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      parsed.positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    const size_t equals = name.find('=');
    const bool inline_value = equals != std::string::npos;
    if (inline_value) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    }
    if (bool_flags.count(name) > 0) {
      if (inline_value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      parsed.values_[name] = "true";
    } else if (value_flags.count(name) > 0) {
      if (!inline_value) {
        if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = args[++i];
      }
      parsed.values_[name] = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return parsed;
}

std::string Arguments::String(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::string> Arguments::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end() || it->second.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  }
  return it->second;
}

absl::StatusOr<int64_t> Arguments::Int(const std::string& name, int64_t fallback, int64_t min, int64_t max) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t value = 0;
  const bool parsed = absl::SimpleAtoi(it->second, &value);
  if (!parsed || value < min || value > max) {
    // An open upper end reads as ">= min", not as a 19-digit number.
    const std::string range = max == INT64_MAX ? absl::StrCat(">= ", min) : absl::StrCat("in ", min, "..", max);
    std::string message = absl::StrCat("--", name, " must be an integer ", range, "; was \"", it->second, "\"");
    if (parsed && value < 0 && min >= 0) absl::StrAppend(&message, " (it cannot be negative)");
    return absl::InvalidArgumentError(message);
  }
  return value;
}

absl::StatusOr<double> Arguments::Double(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double value = 0;
  if (!absl::SimpleAtod(it->second, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number; was \"", it->second, "\""));
  }
  return value;
}

}  // namespace anoclip
