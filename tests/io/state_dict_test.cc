// Weight files: both checkpoint formats agree, and hostile files get errors, not crashes.
#include "io/state_dict.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "test_util.h"

namespace anoclip::io {
namespace {

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

// A safetensors file from a header JSON and a data section.
std::string Safetensors(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  uint64_t length = header.size();
  std::memcpy(bytes.data(), &length, 8);
  return bytes + header + data;
}

TEST(StateDictTest, BinAndSafetensorsLoadToIdenticalTensors) {
  const std::string dir = ::anoclip::testing::TinyModelDir();
  auto safetensors = ReadSafetensors(dir + "/open_clip_model.safetensors");
  auto checkpoint = ReadTorchCheckpoint(dir + "/open_clip_pytorch_model.bin");
  ASSERT_TRUE(safetensors.ok()) << safetensors.status();
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  ASSERT_EQ(safetensors->size(), 182u);
  ASSERT_EQ(safetensors->size(), checkpoint->size());
  for (const auto& [key, tensor] : *safetensors) {
    auto it = checkpoint->find(key);
    ASSERT_NE(it, checkpoint->end()) << key;
    EXPECT_EQ(tensor.scalar_type(), it->second.scalar_type()) << key;
    EXPECT_TRUE(at::equal(tensor, it->second)) << key;
  }
  EXPECT_EQ(safetensors->at("visual.conv1.weight").sizes(), (std::vector<int64_t>{64, 3, 8, 8}));
  EXPECT_EQ(safetensors->at("logit_scale").dim(), 0);
}

TEST(StateDictTest, ModelDirectoryPrefersSafetensors) {
  auto weights = LoadModelWeights(::anoclip::testing::TinyModelDir());
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->size(), 182u);
  EXPECT_EQ(LoadModelWeights("/nonexistent").status().code(), absl::StatusCode::kNotFound);
}

TEST(StateDictTest, SafetensorsRoundTripsEveryDtype) {
  StateDict tensors;
  tensors["f32"] = at::randn({3, 4});
  tensors["f16"] = at::randn({5}).to(at::kHalf);
  tensors["bf16"] = at::randn({2, 2}).to(at::kBFloat16);
  tensors["i64"] = at::arange(7, at::kLong);
  tensors["i32"] = at::arange(3, at::kInt).view({3, 1});
  tensors["scalar"] = at::scalar_tensor(2.5);
  tensors["scalar"] = tensors["scalar"].to(at::kFloat);
  const std::string path = ::testing::TempDir() + "/roundtrip.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  auto loaded = ReadSafetensors(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), tensors.size());
  for (const auto& [key, tensor] : tensors) {
    EXPECT_EQ(loaded->at(key).scalar_type(), tensor.scalar_type()) << key;
    EXPECT_TRUE(at::equal(loaded->at(key), tensor)) << key;
  }
  StateDict unsupported{{"u8", at::zeros({2}, at::kByte)}};
  EXPECT_EQ(WriteSafetensors(path + ".bad", unsupported).code(), absl::StatusCode::kInvalidArgument);
}

// Resident kilobytes of this process's mapping that holds `address`, from /proc/self/smaps.
int64_t ResidentKiBOfMappingAt(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto target = reinterpret_cast<uintptr_t>(address);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &begin, &end) == 2) {  // a mapping's first line
      inside = begin <= target && target < end;
    } else if (inside && line.rfind("Rss:", 0) == 0) {
      return std::stoll(line.substr(4));
    }
  }
  return -1;
}

// A mapped tensor's pages leave the resident set and read back from the file; a tensor elsewhere
// (the heap) keeps its values: the call does nothing there.
TEST(StateDictTest, ReleasedMappedPagesReadBackFromTheFile) {
  ::anoclip::testing::ScopedTempDir dir;
  const std::string path = (dir.path() / "weights.safetensors").string();
  const auto weight = at::randn({1024, 1024});  // 4 MiB: whole pages inside
  ASSERT_TRUE(WriteSafetensors(path, {{"weight", weight}}).ok());
  auto loaded = ReadSafetensors(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const at::Tensor& mapped = loaded->at("weight");
  ASSERT_TRUE(at::equal(mapped, weight));  // reads every page
  EXPECT_TRUE(InMappedFile(mapped));
  const int64_t before = ResidentKiBOfMappingAt(mapped.data_ptr());
  ASSERT_GE(before, 4000);
  ReleaseMappedPages(mapped);
  EXPECT_LE(ResidentKiBOfMappingAt(mapped.data_ptr()), before - 4000);
  EXPECT_TRUE(at::equal(mapped, weight));

  const auto heap = weight.clone();
  EXPECT_FALSE(InMappedFile(heap));
  ReleaseMappedPages(heap);
  EXPECT_TRUE(at::equal(heap, weight));
}

TEST(StateDictTest, GoldenFileLoads) {
  auto golden = ReadSafetensors(::anoclip::testing::TinyVitDir() + "/golden.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  EXPECT_EQ(golden->at("case0/input").sizes(), (std::vector<int64_t>{3, 80, 80}));
}

struct CorruptCase {
  const char* name;
  std::string bytes;
  const char* message;  // a fragment the error must contain
};

TEST(StateDictTest, CorruptSafetensorsAreRejectedWithClearErrors) {
  const std::string f32x2(8, '\0');
  std::string huge_length(8, '\xff');
  const std::vector<CorruptCase> cases = {
      {"empty", "", "at least 8"},
      {"four_bytes", "abcd", "at least 8"},
      {"header_past_end", huge_length + "{}", "does not fit"},
      {"not_json", Safetensors("{not json", ""), "not valid JSON"},
      {"not_object", Safetensors("[1,2]", ""), "not a JSON object"},
      {"unknown_dtype", Safetensors(R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", "xx"), "unsupported dtype"},
      {"shape_mismatch", Safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f32x2), "needs 12 bytes"},
      {"offsets_past_end", Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"), "outside"},
      {"overlap", Safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2), "overlap"},
      {"negative_shape", Safetensors(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f32x2), "negative"},
      {"missing_fields", Safetensors(R"({"a":{"dtype":"F32"}})", ""), "needs dtype, shape and data_offsets"},
  };
  for (const auto& c : cases) {
    auto result = ReadSafetensors(WriteTemp(std::string(c.name) + ".safetensors", c.bytes));
    ASSERT_FALSE(result.ok()) << c.name;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(std::string(result.status().message()).find(c.message), std::string::npos)
        << c.name << ": " << result.status();
  }
  EXPECT_EQ(ReadSafetensors("/nonexistent.safetensors").status().code(), absl::StatusCode::kNotFound);
}

TEST(StateDictTest, TruncatedSafetensorsModelIsRejected) {
  const std::string bytes = ReadBytes(::anoclip::testing::TinyModelDir() + "/open_clip_model.safetensors");
  auto result = ReadSafetensors(WriteTemp("truncated.safetensors", bytes.substr(0, bytes.size() / 2)));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StateDictTest, CorruptCheckpointsAreRejected) {
  EXPECT_FALSE(ReadTorchCheckpoint(WriteTemp("not_zip.bin", "this is not a zip file")).ok());
  const std::string bytes = ReadBytes(::anoclip::testing::TinyModelDir() + "/open_clip_pytorch_model.bin");
  for (size_t keep : {bytes.size() / 2, bytes.size() - 100, size_t{200}}) {
    auto result = ReadTorchCheckpoint(WriteTemp("truncated.bin", bytes.substr(0, keep)));
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << keep;
  }
}

// Writes a torch.save-style zip whose data.pkl is the given pickle.
std::string CheckpointWithPickle(const std::string& name, const std::string& pickle,
                                 const std::map<std::string, std::string>& records = {}) {
  const std::string path = ::testing::TempDir() + "/" + name;
  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [record, bytes] : records) writer.writeRecord(record, bytes.data(), bytes.size());
  writer.writeEndOfFile();
  return path;
}

TEST(StateDictTest, UnpicklerRefusesGlobalsAStateDictDoesNotUse) {
  // GLOBAL 'os system', SHORT_BINUNICODE 'echo', TUPLE1, REDUCE, STOP
  const std::string pickle = std::string("\x80\x02") + "cos\nsystem\n" + "\x8c\x04" + "echo" + "\x85R.";
  auto result = ReadTorchCheckpoint(CheckpointWithPickle("evil.bin", pickle));
  ASSERT_FALSE(result.ok());
  EXPECT_NE(std::string(result.status().message()).find("refusing global os.system"), std::string::npos)
      << result.status();
}

TEST(StateDictTest, UnpicklerReportsMissingStorageRecords) {
  // {'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 2), 0, (2,), (1,), False, OrderedDict())}
  std::string pickle = std::string("\x80\x02}") + "\x8c\x01w" + "ctorch._utils\n_rebuild_tensor_v2\n" + "((" +
                       "\x8c\x07storage" + "ctorch\nFloatStorage\n" + "\x8c\x01" "0" + "\x8c\x03" "cpu" +
                       "K\x02" + "tQ" + std::string("K\x00", 2) + "K\x02\x85" + "K\x01\x85" + "\x89" + "ccollections\nOrderedDict\n)R" +
                       "tR" + "s.";
  auto missing = ReadTorchCheckpoint(CheckpointWithPickle("missing_record.bin", pickle));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("missing record data/0"), std::string::npos)
      << missing.status();
  // The same pickle with its storage present loads.
  std::string storage(8, '\0');
  const float values[2] = {1.5f, -2.f};
  std::memcpy(storage.data(), values, 8);
  auto loaded = ReadTorchCheckpoint(CheckpointWithPickle("with_record.bin", pickle, {{"data/0", storage}}));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_FLOAT_EQ(loaded->at("w")[1].item<float>(), -2.f);
}

}  // namespace
TEST(StateDictTest, UnpicklerSurvivesDeepNestingAndSelfReference) {
  // 300,000 nested tuples: freeing them one level at a time would overflow the stack.
  std::string deep = std::string("\x80\x02}") + "\x8c\x01w" + ")";
  for (int i = 0; i < 300'000; ++i) deep += "\x85";  // TUPLE1
  deep += "s.";
  auto nested = ReadTorchCheckpoint(CheckpointWithPickle("deep.bin", deep));
  EXPECT_EQ(nested.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(nested.status().message()), ::testing::HasSubstr("must map names to tensors"));
  // {'a': <the dict itself>} through the memo (BINPUT 0, BINGET 0): refused, and the sanitizer
  // build checks that the cycle is freed.
  const std::string cycle = std::string("\x80\x02}q\x00(\x8c\x01" "ah\x00u.", 13);
  auto self = ReadTorchCheckpoint(CheckpointWithPickle("cycle.bin", cycle));
  EXPECT_EQ(self.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StateDictTest, UnpicklerRefusesViewsAndStoragesWhoseSizesOverflow) {
  // _rebuild_tensor_v2 over storage '0' (2 floats) with size and stride near 2^62: their product
  // wraps int64, which must not pass for "inside the storage".
  auto pickle_with = [](const std::string& numel, const std::string& size, const std::string& stride) {
    return std::string("\x80\x02}") + "\x8c\x01w" + "ctorch._utils\n_rebuild_tensor_v2\n" + "((" +
           "\x8c\x07storage" + "ctorch\nFloatStorage\n" + "\x8c\x01" "0" + "\x8c\x03" "cpu" + numel + "tQ" +
           std::string("K\x00", 2) + size + "K\x01\x86" + stride + "K\x01\x86" + "\x89" +
           "ccollections\nOrderedDict\n)R" + "tR" + "s.";
  };
  std::string storage(8, '\0');
  const std::string two = "K\x02", one = "K\x01";
  const std::string huge = std::string("\x8a\x08\x01\x00\x00\x00\x00\x00\x00\x40", 10);  // LONG1 2^62 + 1
  const std::string quarter = std::string("\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40", 10);  // LONG1 2^62
  // sizes (2^62+1, 1), strides (4, 1): (2^62) * 4 wraps to 0.
  auto wrapped = ReadTorchCheckpoint(
      CheckpointWithPickle("wrapped_view.bin", pickle_with(two, huge, std::string("K\x04", 2)), {{"data/0", storage}}));
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrapped.status().message()), ::testing::HasSubstr("past the end of storage"));
  // A storage of 2^62 floats that the record's 0 bytes "hold" once numel * 4 wraps.
  auto wrapped_numel = ReadTorchCheckpoint(
      CheckpointWithPickle("wrapped_numel.bin", pickle_with(quarter, one, one), {{"data/0", ""}}));
  EXPECT_EQ(wrapped_numel.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrapped_numel.status().message()), ::testing::HasSubstr("holds 0 bytes"));
  // The same pickle with sane sizes loads, so the refusals are about the sizes.
  auto sane = ReadTorchCheckpoint(CheckpointWithPickle("sane_view.bin", pickle_with(two, one, one), {{"data/0", storage}}));
  ASSERT_TRUE(sane.ok()) << sane.status();
}

TEST(StateDictTest, UnpicklerRefusesAPersistentIdThatNamesNoStorageType) {
  const std::string pickle = std::string("\x80\x02}") + "\x8c\x01w" + "(" + "\x8c\x07storage" +
                             "ccollections\nOrderedDict\n" + "\x8c\x01" "0" + "\x8c\x03" "cpu" + "K\x02" + "tQ" + "s.";
  auto result = ReadTorchCheckpoint(CheckpointWithPickle("not_storage.bin", pickle, {{"data/0", std::string(8, '\0')}}));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()), ::testing::HasSubstr("not a storage type"));
}

}  // namespace anoclip::io
