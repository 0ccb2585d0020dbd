// Command-line arguments of one subcommand: `--key value`, `--key=value` and boolean `--flag`.
// Every flag must be declared; an unknown one is a usage error that names it. (absl flags are
// process-global, which does not fit subcommands with different flag sets.)
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace anoclip {

class Arguments {
 public:
  // `value_flags` take a value; `bool_flags` do not. Names without the leading dashes.
  static absl::StatusOr<Arguments> Parse(const std::vector<std::string>& args,
                                         const std::set<std::string>& value_flags,
                                         const std::set<std::string>& bool_flags);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string String(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<std::string> Required(const std::string& name) const;
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t fallback, int64_t min, int64_t max) const;
  absl::StatusOr<double> Double(const std::string& name, double fallback) const;
  bool Flag(const std::string& name) const { return Has(name); }
  // Words that are not flags, in order.
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

}  // namespace anoclip
