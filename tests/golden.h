// Golden data of the reference implementation (../shared/reference/tiny-vit) and the README's
// tolerance checks.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "io/state_dict.h"
#include "test_util.h"

namespace anoclip::testing {

inline const io::StateDict& Golden() {
  static const io::StateDict* golden = [] {
    auto loaded = io::ReadSafetensors(TinyVitDir() + "/golden.safetensors");
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.status();
      return new io::StateDict();
    }
    return new io::StateDict(std::move(loaded).value());
  }();
  return *golden;
}

inline at::Tensor GoldenTensor(const std::string& key) {
  auto it = Golden().find(key);
  if (it == Golden().end()) {
    ADD_FAILURE() << "golden tensor missing: " << key;
    return {};
  }
  return it->second;
}

inline const nlohmann::json& GoldenJson() {
  static const nlohmann::json* json = [] {
    std::ifstream in(TinyVitDir() + "/golden.json");
    std::stringstream text;
    text << in.rdbuf();
    return new nlohmann::json(nlohmann::json::parse(text.str()));
  }();
  return *json;
}

// max |actual - expected| <= tolerance, shapes equal.
inline ::testing::AssertionResult AllClose(const at::Tensor& actual, const at::Tensor& expected,
                                           double tolerance) {
  if (!actual.defined() || !expected.defined()) return ::testing::AssertionFailure() << "undefined tensor";
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != " << expected.sizes();
  }
  const double error =
      (actual.to(at::kDouble).cpu() - expected.to(at::kDouble).cpu()).abs().max().item<double>();
  if (error <= tolerance) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << error << " > tolerance " << tolerance;
}

// The README's rule for features and embeddings: 1e-4 × the tensor's max abs value.
inline ::testing::AssertionResult CloseRelativeToMax(const at::Tensor& actual, const at::Tensor& expected) {
  const double scale = expected.abs().max().item<double>();
  return AllClose(actual, expected, 1e-4 * scale);
}

}  // namespace anoclip::testing
