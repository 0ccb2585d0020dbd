// LoadEngine: the model id, remembered across loads per weight file and never past a change to
// the file; the GEMM library "auto" chose, remembered per CPU, threads and libraries; the
// intra-op thread count.
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

class EngineMemoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(root_ / "model");
    for (const auto& entry : fs::directory_iterator(::anoclip::testing::TinyModelDir())) {
      fs::copy_file(entry.path(), root_ / "model" / entry.path().filename());
    }
  }

  std::shared_ptr<Engine> LoadWith(const std::string& memo_dir, int threads = 0) {
    DetectorOptions options;
    options.model_dir = (root_ / "model").string();
    options.vocab_path = ::anoclip::testing::VocabPath();
    options.memo_dir = memo_dir;
    options.threads = threads;
    auto engine = LoadEngine(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? *engine : nullptr;
  }
  std::string Load(const std::string& memo_dir) {
    auto engine = LoadWith(memo_dir);
    return engine ? engine->model_id : "";
  }

  // The memo files whose names start with `prefix`.
  std::vector<fs::path> Memos(const std::string& prefix = "model-id-") const {
    std::vector<fs::path> memos;
    for (const auto& entry : fs::directory_iterator(root_ / "memo")) {
      if (entry.path().filename().string().rfind(prefix, 0) == 0) memos.push_back(entry.path());
    }
    return memos;
  }

  ::anoclip::testing::ScopedTempDir temp_;
  const fs::path& root_ = temp_.path();
};

TEST_F(EngineMemoTest, ALoadUsesTheRememberedIdUntilTheWeightFileChanges) {
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
  content["value"] = "0123456789abcdef";
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

TEST_F(EngineMemoTest, AnUnreadableMemoIsIgnored) {
  const std::string hashed = Load("");
  const std::string memo_dir = (root_ / "memo").string();
  ASSERT_EQ(Load(memo_dir), hashed);
  nlohmann::json valid;
  std::ifstream(Memos()[0]) >> valid;
  auto wrong_type = valid, wrong_key = valid;
  wrong_type["value"] = 7;
  wrong_key["key"]["format"] = "anoclip-model-id/1";
  wrong_key["value"] = "0123456789abcdef";
  for (const std::string& garbage : {std::string(""), std::string("{"), std::string("[]"), std::string("{\"key\":1}"),
                                     wrong_type.dump(), wrong_key.dump()}) {
    std::ofstream(Memos()[0], std::ios::trunc) << garbage;
    EXPECT_EQ(Load(memo_dir), hashed) << garbage;
  }
}

TEST_F(EngineMemoTest, AutoGemmIsTimedOncePerCpuThreadsAndLibraries) {
  const model::GemmLibrary previous_library = model::CurrentGemmLibrary();
  const int previous_threads = at::get_num_threads();
  const std::string memo_dir = (root_ / "memo").string();
  const auto first = LoadWith(memo_dir, 2);
  ASSERT_NE(first, nullptr);
  ASSERT_EQ(Memos("gemm-").size(), 1u);
  const fs::path memo = Memos("gemm-")[0];
  nlohmann::json content;
  std::ifstream(memo) >> content;
  EXPECT_EQ(content["value"], model::GemmLibraryName(first->gemm_library));
  EXPECT_EQ(content["key"]["threads"], 2);
  EXPECT_FALSE(content["key"]["cpu_flags"].get<std::string>().empty());

  // A later load takes the remembered library without timing: a planted choice comes back, both ways.
  for (const model::GemmLibrary planted : {model::GemmLibrary::kBlas, model::GemmLibrary::kOneDnn}) {
    if (planted == model::GemmLibrary::kOneDnn && !at::hasMKLDNN()) continue;
    content["value"] = model::GemmLibraryName(planted);
    std::ofstream(memo, std::ios::trunc) << content.dump();
    const auto engine = LoadWith(memo_dir, 2);
    ASSERT_NE(engine, nullptr);
    EXPECT_EQ(engine->gemm_library, planted);
  }

  // An unreadable choice is timed again and written anew.
  content["value"] = "mkl";
  std::ofstream(memo, std::ios::trunc) << content.dump();
  const auto retimed = LoadWith(memo_dir, 2);
  ASSERT_NE(retimed, nullptr);
  std::ifstream(memo) >> content;
  EXPECT_EQ(content["value"], model::GemmLibraryName(retimed->gemm_library));

  // Another thread count is another key: timed and remembered beside the first.
  ASSERT_NE(LoadWith(memo_dir, 1), nullptr);
  EXPECT_EQ(Memos("gemm-").size(), 2u);
  model::SetGemmLibrary(previous_library);  // loads set both for the whole process
  at::set_num_threads(previous_threads);
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
