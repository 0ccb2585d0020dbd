// Domain-aware state prompt ensemble (docs/algorithm.md §3). Torch-free.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace anoclip::anomaly {

// What the text side of a detection is built from. Empty custom lists mean the paper's defaults
// for `kind`.
struct PromptSpec {
  std::string class_name;
  std::string kind = "object";                 // "object" or "texture"
  std::vector<std::string> domains;            // e.g. "industrial photo"; default by kind
  std::vector<std::string> normal_states;      // templates with "{}", default 7 of the paper
  std::vector<std::string> abnormal_states;    // same count as normal_states
  // Stable, unambiguous key for caches: every field and list entry length-prefixed, so two
  // different specs never share a key whatever bytes their names hold.
  std::string CacheKey() const;
};

struct PromptSet {
  std::vector<std::string> normal;    // N prompts, row (dom*22 + tpl)*S + st
  std::vector<std::string> abnormal;  // N prompts, same order
};

struct PromptLimits {
  size_t max_class_name_bytes = 256;
  size_t max_custom_entries = 64;  // per list
  size_t max_entry_bytes = 256;
  // domains x 22 templates x states; the defaults make 462. Bounds the text encoder's work and
  // memory for one spec.
  size_t max_prompts_per_state = 2048;
};

// "texture" for MVTec AD's texture classes (carpet, leather, grid, tile, wood), else "object".
std::string DefaultKindForClass(const std::string& class_name);

// Validates the spec (non-empty class of valid UTF-8 without control characters, known kind,
// limits, each state containing one "{}") and expands it.
absl::StatusOr<PromptSet> BuildPromptSet(const PromptSpec& spec, const PromptLimits& limits = {});

// Prompts per state the spec expands to, without expanding it.
size_t PromptsPerState(const PromptSpec& spec);

}  // namespace anoclip::anomaly
