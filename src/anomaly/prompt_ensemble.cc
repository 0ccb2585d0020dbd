#include "anomaly/prompt_ensemble.h"

#include <array>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace anoclip::anomaly {
namespace {

const std::vector<std::string>& DefaultNormalStates() {
  static const auto* states = new std::vector<std::string>{
      "normal {}", "flawless {}", "perfect {}", "unblemished {}",
      "{} without flaw", "{} without defect", "{} without damage"};
  return *states;
}

const std::vector<std::string>& DefaultAbnormalStates() {
  static const auto* states = new std::vector<std::string>{
      "damaged {}", "abnormal {}", "imperfect {}", "blemished {}",
      "{} with flaw", "{} with defect", "{} with damage"};
  return *states;
}

std::vector<std::string> DefaultDomains(const std::string& kind) {
  if (kind == "texture") return {"industrial photo", "textural photo", "surface picture"};
  return {"industrial photo", "industrial image", "manufacturing image"};
}

// The 22 templates of §3; "X" is the domain, "A" its article, "{}" the stated class.
constexpr std::array<const char*, 22> kTemplates = {
    "a cropped X of the {}", "a cropped X of a {}", "a close-up X of a {}", "a close-up X of the {}",
    "a bright X of a {}", "a bright X of the {}", "a dark X of the {}", "a dark X of a {}",
    "a jpeg corrupted X of a {}", "a jpeg corrupted X of the {}", "a blurry X of the {}",
    "a blurry X of a {}", "A X of a {}", "A X of the {}", "A X of a small {}", "A X of the small {}",
    "A X of a large {}", "A X of the large {}", "A X of the {} for visual inspection",
    "A X of a {} for visual inspection", "A X of the {} for anomaly detection",
    "A X of a {} for anomaly detection"};

std::string Article(const std::string& word) {
  const char first = word.empty() ? 'x' : absl::ascii_tolower(word[0]);
  return std::string("aeiou").find(first) != std::string::npos ? "an" : "a";
}

std::string ExpandTemplate(const std::string& tpl, const std::string& domain) {
  std::string text = tpl;
  if (text.rfind("A X", 0) == 0) text.replace(0, 1, Article(domain));
  const size_t x = text.find(" X ");
  text.replace(x + 1, 1, domain);
  return text;
}

// Names end up in file keys, logs and metrics labels: printable UTF-8 only.
absl::Status CheckText(const std::string& text, const char* name) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x20 || byte == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(name, " contains a control character (byte ", int{byte}, ")"));
    }
    int length = byte < 0x80 ? 1 : (byte >> 5) == 0x6 ? 2 : (byte >> 4) == 0xe ? 3 : (byte >> 3) == 0x1e ? 4 : 0;
    if (length == 0 || i + length > text.size()) {
      return absl::InvalidArgumentError(absl::StrCat(name, " is not valid UTF-8"));
    }
    for (int k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) >> 6) != 0x2) {
        return absl::InvalidArgumentError(absl::StrCat(name, " is not valid UTF-8"));
      }
    }
    if (length == 2 && byte < 0xc2) return absl::InvalidArgumentError(absl::StrCat(name, " is not valid UTF-8"));
    i += length;
  }
  return absl::OkStatus();
}

size_t CountPlaceholders(const std::string& text) {
  size_t count = 0;
  for (size_t pos = text.find("{}"); pos != std::string::npos; pos = text.find("{}", pos + 2)) ++count;
  return count;
}

absl::Status CheckList(const std::vector<std::string>& list, const char* name,
                       const PromptLimits& limits, bool needs_placeholder) {
  if (list.size() > limits.max_custom_entries) {
    return absl::InvalidArgumentError(absl::StrCat(name, " has ", list.size(),
                                                   " entries; at most ", limits.max_custom_entries));
  }
  for (const auto& entry : list) {
    if (entry.empty() || entry.size() > limits.max_entry_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(name, " entries must be 1..",
                                                     limits.max_entry_bytes, " bytes"));
    }
    if (auto s = CheckText(entry, name); !s.ok()) return s;
    if (needs_placeholder && CountPlaceholders(entry) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " entry \"", entry, "\" must contain \"{}\" exactly once"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string PromptSpec::CacheKey() const {
  std::string key = "spec/2";
  auto add = [&key](const std::string& field) { absl::StrAppend(&key, ":", field.size(), ":", field); };
  auto add_list = [&](const std::vector<std::string>& list) {
    absl::StrAppend(&key, "[", list.size());
    for (const auto& entry : list) add(entry);
    key += "]";
  };
  add(class_name);
  add(kind);
  add_list(domains);
  add_list(normal_states);
  add_list(abnormal_states);
  return key;
}

size_t PromptsPerState(const PromptSpec& spec) {
  const size_t domains = spec.domains.empty() ? DefaultDomains(spec.kind).size() : spec.domains.size();
  const size_t states = spec.normal_states.empty() ? DefaultNormalStates().size() : spec.normal_states.size();
  return domains * kTemplates.size() * states;
}

std::string DefaultKindForClass(const std::string& class_name) {
  static const std::array<const char*, 5> kTextures = {"carpet", "leather", "grid", "tile", "wood"};
  for (const char* texture : kTextures) {
    if (class_name == texture) return "texture";
  }
  return "object";
}

absl::StatusOr<PromptSet> BuildPromptSet(const PromptSpec& spec, const PromptLimits& limits) {
  if (spec.class_name.empty()) return absl::InvalidArgumentError("class name is empty");
  if (spec.class_name.size() > limits.max_class_name_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("class name is ", spec.class_name.size(),
                                                   " bytes; at most ", limits.max_class_name_bytes));
  }
  if (auto s = CheckText(spec.class_name, "class name"); !s.ok()) return s;
  if (spec.kind != "object" && spec.kind != "texture") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown kind \"", spec.kind, "\"; expected object or texture"));
  }
  if (auto s = CheckList(spec.domains, "domains", limits, false); !s.ok()) return s;
  if (auto s = CheckList(spec.normal_states, "normal_states", limits, true); !s.ok()) return s;
  if (auto s = CheckList(spec.abnormal_states, "abnormal_states", limits, true); !s.ok()) return s;
  if (spec.normal_states.size() != spec.abnormal_states.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "normal_states and abnormal_states must have the same count; got ",
        spec.normal_states.size(), " and ", spec.abnormal_states.size()));
  }
  if (const size_t prompts = PromptsPerState(spec); prompts > limits.max_prompts_per_state) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the spec expands to ", prompts, " prompts per state (domains x 22 templates x states); at most ",
        limits.max_prompts_per_state));
  }

  const auto domains = spec.domains.empty() ? DefaultDomains(spec.kind) : spec.domains;
  const auto& normal = spec.normal_states.empty() ? DefaultNormalStates() : spec.normal_states;
  const auto& abnormal = spec.abnormal_states.empty() ? DefaultAbnormalStates() : spec.abnormal_states;

  PromptSet set;
  for (const auto& domain : domains) {
    for (const char* tpl : kTemplates) {
      const std::string with_domain = ExpandTemplate(tpl, domain);
      for (size_t st = 0; st < normal.size(); ++st) {
        const std::string normal_state = absl::StrReplaceAll(normal[st], {{"{}", spec.class_name}});
        const std::string abnormal_state = absl::StrReplaceAll(abnormal[st], {{"{}", spec.class_name}});
        set.normal.push_back(absl::StrReplaceAll(with_domain, {{"{}", normal_state}}));
        set.abnormal.push_back(absl::StrReplaceAll(with_domain, {{"{}", abnormal_state}}));
      }
    }
  }
  return set;
}

}  // namespace anoclip::anomaly
