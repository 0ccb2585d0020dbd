// The BPE tokenizer against the reference token ids.
#include "model/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>

#include "golden.h"

namespace anoclip::model {
namespace {

std::unique_ptr<BpeTokenizer> Load() {
  auto tokenizer = BpeTokenizer::FromFile(::anoclip::testing::VocabPath());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(tokenizer).value() : nullptr;
}

TEST(TokenizerTest, MatchesEveryGoldenTokenSequenceExactly) {
  auto tokenizer = Load();
  ASSERT_NE(tokenizer, nullptr);
  const auto& cases = ::anoclip::testing::GoldenJson()["tokens"];
  ASSERT_GE(cases.size(), 5u);
  for (const auto& c : cases) {
    const std::string text = c["text"];
    const auto expected = c["ids"].get<std::vector<int64_t>>();
    auto ids = tokenizer->EncodeForModel(text, 77);
    // Golden ids carry no padding.
    ids.resize(std::min<size_t>(ids.size(), expected.size() < 77 ? expected.size() : 77));
    EXPECT_EQ(ids, expected) << text;
  }
}

TEST(TokenizerTest, PadsAndTruncatesToTheContext) {
  auto tokenizer = Load();
  ASSERT_NE(tokenizer, nullptr);
  auto short_ids = tokenizer->EncodeForModel("a bottle", 77);
  ASSERT_EQ(short_ids.size(), 77u);
  EXPECT_EQ(short_ids[0], BpeTokenizer::kStartOfText);
  EXPECT_EQ(short_ids[3], BpeTokenizer::kEndOfText);
  EXPECT_EQ(short_ids[4], 0);
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += "very ";
  auto long_ids = tokenizer->EncodeForModel(long_text, 77);
  ASSERT_EQ(long_ids.size(), 77u);
  EXPECT_EQ(long_ids.back(), BpeTokenizer::kEndOfText);
  EXPECT_EQ(tokenizer->Encode("A Photo &amp; a&#39;s"), tokenizer->Encode("a photo & a's"));
}

TEST(TokenizerTest, MissingVocabularyIsNotFound) {
  auto tokenizer = BpeTokenizer::FromFile("/nonexistent/bpe_simple_vocab_16e6.txt.gz");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerTest, CorruptOrShortVocabularyIsAnError) {
  const std::string plain = ::testing::TempDir() + "/plain_vocab.txt.gz";
  std::ofstream(plain) << "#version\nh e\n";  // gzread passes plain text through: too short
  EXPECT_EQ(BpeTokenizer::FromFile(plain).status().code(), absl::StatusCode::kInvalidArgument);

  // The first half of the real gzip: a truncated stream.
  std::ifstream in(::anoclip::testing::VocabPath(), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string truncated = ::testing::TempDir() + "/truncated_vocab.txt.gz";
  std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  auto result = BpeTokenizer::FromFile(truncated);
  EXPECT_FALSE(result.ok());
}

}  // namespace
}  // namespace anoclip::model
