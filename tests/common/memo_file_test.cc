// ReadMemo/WriteMemo: a value comes back only under its own key, and a bad file reads as none.
#include "common/memo_file.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "test_util.h"

namespace anoclip {
namespace {

namespace fs = std::filesystem;

class MemoFileTest : public ::testing::Test {
 protected:
  ::anoclip::testing::ScopedTempDir temp_;
  const fs::path& root_ = temp_.path();
};

TEST_F(MemoFileTest, AValueComesBackUnderItsOwnKeyOnly) {
  const std::string path = (root_ / "sub" / "memo.json").string();  // the directory is created
  const nlohmann::json key = {{"format", "test/1"}, {"threads", 2}};
  EXPECT_FALSE(ReadMemo(path, key).has_value());
  WriteMemo(path, key, "onednn");
  ASSERT_TRUE(ReadMemo(path, key).has_value());
  EXPECT_EQ(*ReadMemo(path, key), "onednn");
  EXPECT_FALSE(ReadMemo(path, {{"format", "test/1"}, {"threads", 4}}).has_value());
  EXPECT_FALSE(ReadMemo(path, {{"format", "test/2"}, {"threads", 2}}).has_value());
  WriteMemo(path, key, 7);  // rewritten in place
  EXPECT_EQ(*ReadMemo(path, key), 7);
  EXPECT_EQ(std::distance(fs::directory_iterator(root_ / "sub"), fs::directory_iterator()), 1);  // no temp left
}

TEST_F(MemoFileTest, ABadFileReadsAsNone) {
  const std::string path = (root_ / "memo.json").string();
  const nlohmann::json key = {{"format", "test/1"}};
  for (const std::string& text : {std::string(""), std::string("{"), std::string("[]"), std::string("{\"key\":{\"format\":\"test/1\"}}"),
                                  std::string("{\"value\":1}")}) {
    std::ofstream(path, std::ios::trunc) << text;
    EXPECT_FALSE(ReadMemo(path, key).has_value()) << text;
  }
  // Larger than a memo can be: not parsed, even with the right key.
  std::ofstream(path, std::ios::trunc) << nlohmann::json{{"key", key}, {"value", std::string(70 << 10, 'x')}}.dump();
  EXPECT_FALSE(ReadMemo(path, key).has_value());
}

TEST_F(MemoFileTest, AnUnwritableDirectoryOnlyWarns) {
  const fs::path blocker = root_ / "file";
  std::ofstream(blocker) << "not a directory";
  const std::string path = (blocker / "memo.json").string();
  WriteMemo(path, {{"format", "test/1"}}, 1);  // returns; stderr says so
  EXPECT_FALSE(ReadMemo(path, {{"format", "test/1"}}).has_value());
}

}  // namespace
}  // namespace anoclip
