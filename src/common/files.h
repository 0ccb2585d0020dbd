// Whole-file reads and writes with one error message for every caller.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace anoclip {

// The file's bytes; NotFound("cannot read PATH") when it cannot be opened.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Replaces the file with `bytes`; PermissionDenied("cannot write PATH") when it cannot be opened,
// DataLoss when the write fails.
absl::Status WriteStringToFile(const std::string& path, const std::string& bytes);

}  // namespace anoclip
