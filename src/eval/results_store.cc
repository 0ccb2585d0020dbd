#include "eval/results_store.h"

#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace anoclip::eval {
namespace {

constexpr char kMagic[4] = {'A', 'E', 'V', '1'};
// A map larger than this is not one the engine produced.
constexpr uint64_t kMaxSide = 4096;

uint32_t ReadU32(const char* bytes) {
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  return value;
}

void AppendU32(std::string& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
}

}  // namespace

absl::StatusOr<std::vector<ImageResult>> ReadResults(const std::string& path, uint64_t* valid_bytes) {
  std::vector<ImageResult> results;
  if (valid_bytes) *valid_bytes = 0;
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return results;
  ANOCLIP_ASSIGN_OR_RETURN(const std::string data, ReadFileToString(path));
  size_t at = 0;
  auto malformed = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(path, ": record at byte ", at, " is malformed (", why,
                                            "); remove the file to score its class again"));
  };
  while (at < data.size()) {
    if (data.size() - at < 8) break;  // cut short
    if (std::memcmp(data.data() + at, kMagic, 4) != 0) return malformed("bad magic");
    const uint64_t header_size = ReadU32(data.data() + at + 4);
    if (data.size() - at - 8 < header_size) break;
    nlohmann::json header = nlohmann::json::parse(data.substr(at + 8, header_size), nullptr, false);
    if (header.is_discarded() || !header.is_object()) return malformed("header is not JSON");
    ImageResult result;
    uint64_t rows = 0, cols = 0;
    bool has_mask = false;
    try {
      result.image = header.at("image").get<std::string>();
      result.defect = header.at("defect").get<std::string>();
      result.anomalous = header.at("anomalous").get<bool>();
      result.image_score = header.at("score").get<float>();
      rows = header.at("rows").get<uint64_t>();
      cols = header.at("cols").get<uint64_t>();
      has_mask = header.at("has_mask").get<bool>();
    } catch (const nlohmann::json::exception& e) {
      return malformed(e.what());
    }
    if (rows == 0 || cols == 0 || rows > kMaxSide || cols > kMaxSide) return malformed("map size out of range");
    const uint64_t body = rows * cols * (sizeof(float) + (has_mask ? 1 : 0));
    const size_t body_at = at + 8 + header_size;
    if (data.size() - body_at < body) break;
    result.map.create(static_cast<int>(rows), static_cast<int>(cols), CV_32F);
    std::memcpy(result.map.data, data.data() + body_at, rows * cols * sizeof(float));
    if (has_mask) {
      result.mask.create(static_cast<int>(rows), static_cast<int>(cols), CV_8U);
      std::memcpy(result.mask.data, data.data() + body_at + rows * cols * sizeof(float), rows * cols);
    }
    results.push_back(std::move(result));
    at = body_at + body;
    if (valid_bytes) *valid_bytes = at;
  }
  return results;
}

absl::StatusOr<std::unique_ptr<ResultsWriter>> ResultsWriter::Open(const std::string& path, uint64_t keep_bytes) {
  std::error_code error;
  if (keep_bytes == 0) {
    std::filesystem::remove(path, error);
  } else {
    std::filesystem::resize_file(path, keep_bytes, error);  // drops a record cut short
    if (error) return absl::PermissionDeniedError(absl::StrCat("cannot truncate ", path, ": ", error.message()));
  }
  std::FILE* file = std::fopen(path.c_str(), "ab");
  if (file == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  return std::unique_ptr<ResultsWriter>(new ResultsWriter(path, file));
}

ResultsWriter::~ResultsWriter() { std::fclose(file_); }

absl::Status ResultsWriter::Append(const ImageResult& result) {
  if (result.map.type() != CV_32F || result.map.empty() || !result.map.isContinuous()) {
    return absl::InvalidArgumentError("a result's map must be a continuous, non-empty CV_32F matrix");
  }
  const bool has_mask = !result.mask.empty();
  if (has_mask && (result.mask.type() != CV_8U || result.mask.size() != result.map.size() || !result.mask.isContinuous())) {
    return absl::InvalidArgumentError("a result's mask must be CV_8U of the map's size");
  }
  const nlohmann::json header = {{"image", result.image},         {"defect", result.defect},
                                 {"anomalous", result.anomalous}, {"score", result.image_score},
                                 {"rows", result.map.rows},       {"cols", result.map.cols},
                                 {"has_mask", has_mask}};
  const std::string header_text = header.dump();
  std::string record(kMagic, 4);
  AppendU32(record, static_cast<uint32_t>(header_text.size()));
  record += header_text;
  record.append(reinterpret_cast<const char*>(result.map.data), result.map.total() * sizeof(float));
  if (has_mask) record.append(reinterpret_cast<const char*>(result.mask.data), result.mask.total());
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size() || std::fflush(file_) != 0) {
    return absl::DataLossError(absl::StrCat("cannot write ", path_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace anoclip::eval
