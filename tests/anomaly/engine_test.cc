// LoadEngine: the model id, remembered across loads per weight file and never past a change to
// the file; the intra-op thread count.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <thread>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "anomaly/engine.h"
#include "test_util.h"

namespace anoclip::anomaly {
namespace {

namespace fs = std::filesystem;

class ModelIdMemoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/anoclip-engine-test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    fs::create_directories(root_ / "model");
    for (const auto& entry : fs::directory_iterator(::anoclip::testing::TinyModelDir())) {
      fs::copy_file(entry.path(), root_ / "model" / entry.path().filename());
    }
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string Load(const std::string& memo_dir) {
    DetectorOptions options;
    options.model_dir = (root_ / "model").string();
    options.vocab_path = ::anoclip::testing::VocabPath();
    options.model_id_cache_dir = memo_dir;
    auto engine = LoadEngine(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? (*engine)->model_id : "";
  }

  std::vector<fs::path> Memos() const {
    std::vector<fs::path> memos;
    for (const auto& entry : fs::directory_iterator(root_ / "memo")) memos.push_back(entry.path());
    return memos;
  }

  fs::path root_;
};

TEST_F(ModelIdMemoTest, ALoadUsesTheRememberedIdUntilTheWeightFileChanges) {
  const std::string hashed = Load("");
  ASSERT_EQ(hashed.size(), 16u);
  const std::string memo_dir = (root_ / "memo").string();
  EXPECT_EQ(Load(memo_dir), hashed);
  ASSERT_EQ(Memos().size(), 1u);
  EXPECT_EQ(Load(memo_dir), hashed);

  // The memo is what a load reads while the file is unchanged: a planted id comes back.
  const fs::path memo = Memos()[0];
  nlohmann::json content;
  std::ifstream(memo) >> content;
  content["model_id"] = "0123456789abcdef";
  std::ofstream(memo, std::ios::trunc) << content.dump();
  EXPECT_EQ(Load(memo_dir), "0123456789abcdef");

  // Any write moves the file's times: the id is hashed again and remembered anew.
  const fs::path weights = root_ / "model" / "open_clip_model.safetensors";
  const timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, weights.c_str(), times, 0), 0);
  EXPECT_EQ(Load(memo_dir), hashed);
  EXPECT_EQ(Load(memo_dir), hashed);
  EXPECT_EQ(Memos().size(), 1u);
}

TEST_F(ModelIdMemoTest, AnUnreadableMemoIsIgnored) {
  const std::string hashed = Load("");
  const std::string memo_dir = (root_ / "memo").string();
  ASSERT_EQ(Load(memo_dir), hashed);
  for (const char* garbage : {"", "{", "[]", "{\"format\":1}", "{\"format\":\"anoclip-model-id/1\",\"model_id\":7}"}) {
    std::ofstream(Memos()[0], std::ios::trunc) << garbage;
    EXPECT_EQ(Load(memo_dir), hashed) << garbage;
  }
}

TEST(EngineThreadsTest, ZeroTakesOmpNumThreadsWhereSetAndAnExplicitCountWins) {
  const char* saved = std::getenv("OMP_NUM_THREADS");
  const std::string previous = saved ? saved : "";
  DetectorOptions options;
  options.model_dir = ::anoclip::testing::TinyModelDir();
  options.vocab_path = ::anoclip::testing::VocabPath();
  auto threads_after_load = [&options] {
    auto engine = LoadEngine(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return at::get_num_threads();
  };
  setenv("OMP_NUM_THREADS", "3", 1);
  EXPECT_EQ(threads_after_load(), 3);
  options.threads = 2;
  EXPECT_EQ(threads_after_load(), 2);
  options.threads = 0;
  setenv("OMP_NUM_THREADS", "lots", 1);  // not a number: every core
  EXPECT_EQ(threads_after_load(), static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  if (saved) {
    setenv("OMP_NUM_THREADS", previous.c_str(), 1);
  } else {
    unsetenv("OMP_NUM_THREADS");
  }
}

}  // namespace
}  // namespace anoclip::anomaly
