// Whole-file reads with one error message for every caller.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace anoclip {

// The file's bytes; NotFound("cannot read PATH") when it cannot be opened.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace anoclip
