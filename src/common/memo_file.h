// Small JSON files in which a start-up step remembers a result that is slow to compute, valid for
// as long as what it was computed from (its key) stays the same: the model id per weight file,
// the GEMM library per CPU and library versions (src/anomaly/engine.cc).
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace anoclip {

// The value remembered at `path` under exactly `key`; nothing where the file is missing,
// unreadable, larger than 64 KiB, or was written for another key.
std::optional<nlohmann::json> ReadMemo(const std::string& path, const nlohmann::json& key);

// Remembers `value` under `key` at `path`, creating its directory: written aside and renamed, so
// that a reader never sees half a file. Failing warns on stderr and costs the next start only
// the work again.
void WriteMemo(const std::string& path, const nlohmann::json& key, const nlohmann::json& value);

}  // namespace anoclip
