// Safetensors: 8-byte little-endian header length, a JSON header, then the raw tensor bytes.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "io/state_dict.h"

namespace anoclip::io {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100 << 20;  // the format's own limit

// The live mappings' address ranges, for ReleaseMappedPages.
struct MappedRanges {
  std::mutex mutex;
  std::map<uintptr_t, uintptr_t> ends;  // begin -> end
};

MappedRanges& TheMappedRanges() {
  static MappedRanges ranges;
  return ranges;
}

struct Mapping {
  void* data = MAP_FAILED;
  size_t size = 0;
  void Register() {
    MappedRanges& ranges = TheMappedRanges();
    std::lock_guard<std::mutex> lock(ranges.mutex);
    ranges.ends[reinterpret_cast<uintptr_t>(data)] = reinterpret_cast<uintptr_t>(data) + size;
  }
  ~Mapping() {
    if (data == MAP_FAILED) return;
    MappedRanges& ranges = TheMappedRanges();
    std::lock_guard<std::mutex> lock(ranges.mutex);
    ranges.ends.erase(reinterpret_cast<uintptr_t>(data));
    munmap(data, size);
  }
};

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  size_t bytes;
};

constexpr DtypeInfo kDtypes[] = {
    {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},  {"I32", at::kInt, 4},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const auto& info : kDtypes) {
    if (name == info.name) return &info;
  }
  return nullptr;
}

const DtypeInfo* FindDtype(at::ScalarType type) {
  for (const auto& info : kDtypes) {
    if (type == info.type) return &info;
  }
  return nullptr;
}

absl::Status Invalid(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

}  // namespace

absl::StatusOr<StateDict> ReadSafetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat info;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    close(fd);
    return Invalid(path, "not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(info.st_size);
  if (file_size < 8) {
    close(fd);
    return Invalid(path, absl::StrCat("file is ", file_size, " bytes; a safetensors file has at least 8"));
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = file_size;
  // Private and writable: pages are shared with the page cache until written, and a write
  // (to a tensor that aliases the file) copies that page instead of faulting.
  mapping->data = mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  close(fd);
  if (mapping->data == MAP_FAILED) return Invalid(path, absl::StrCat("mmap failed: ", std::strerror(errno)));
  mapping->Register();
  const auto* bytes = static_cast<const uint8_t*>(mapping->data);

  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    return Invalid(path, absl::StrCat("header length ", header_size, " does not fit in the ", file_size,
                                      "-byte file"));
  }
  const auto header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_size, nullptr, false);
  if (header.is_discarded()) return Invalid(path, "header is not valid JSON");
  if (!header.is_object()) return Invalid(path, "header is not a JSON object");

  const uint64_t data_begin = 8 + header_size;
  const uint64_t data_size = file_size - data_begin;
  struct Range {
    uint64_t begin, end;
    std::string key;
  };
  std::vector<Range> ranges;
  StateDict tensors;
  for (const auto& [key, entry] : header.items()) {
    if (key == "__metadata__") {
      if (!entry.is_object()) return Invalid(path, "__metadata__ must be an object");
      for (const auto& [name, value] : entry.items()) {
        if (!value.is_string()) return Invalid(path, absl::StrCat("__metadata__ value ", name, " must be a string"));
        if (metadata != nullptr) (*metadata)[name] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      return Invalid(path, absl::StrCat("tensor ", key, ": needs dtype, shape and data_offsets"));
    }
    if (!entry["dtype"].is_string()) return Invalid(path, absl::StrCat("tensor ", key, ": dtype must be a string"));
    const DtypeInfo* dtype = FindDtype(entry["dtype"].get<std::string>());
    if (dtype == nullptr) {
      return Invalid(path, absl::StrCat("tensor ", key, ": unsupported dtype ", entry["dtype"].dump(),
                                        " (supported: F32, F16, BF16, I64, I32)"));
    }
    const auto& shape_json = entry["shape"];
    if (!shape_json.is_array() || shape_json.size() > 16) {
      return Invalid(path, absl::StrCat("tensor ", key, ": shape must be an array of at most 16 sizes"));
    }
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& dim : shape_json) {
      if (!dim.is_number_integer() || dim.get<int64_t>() < 0) {
        return Invalid(path, absl::StrCat("tensor ", key, ": shape ", shape_json.dump(), " has a negative or non-integer size"));
      }
      const uint64_t d = dim.get<uint64_t>();
      if (d != 0 && numel > data_size / d) {
        return Invalid(path, absl::StrCat("tensor ", key, ": shape ", shape_json.dump(), " exceeds the file"));
      }
      numel *= d;
      shape.push_back(static_cast<int64_t>(d));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return Invalid(path, absl::StrCat("tensor ", key, ": data_offsets must be two non-negative integers"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Invalid(path, absl::StrCat("tensor ", key, ": data_offsets [", begin, ",", end,
                                        "] outside the ", data_size, "-byte data section"));
    }
    if (end - begin != numel * dtype->bytes) {
      return Invalid(path, absl::StrCat("tensor ", key, ": shape ", shape_json.dump(), " of ", dtype->name,
                                        " needs ", numel * dtype->bytes, " bytes but data_offsets span ",
                                        end - begin));
    }
    ranges.push_back({begin, end, key});

    void* data = const_cast<uint8_t*>(bytes + data_begin + begin);
    auto options = at::TensorOptions().dtype(dtype->type);
    if (reinterpret_cast<uintptr_t>(data) % dtype->bytes == 0) {
      // Zero-copy: the tensor keeps the mapping alive.
      tensors[key] = at::from_blob(data, shape, [mapping](void*) {}, options);
    } else {
      // The format does not promise alignment; misaligned data is copied.
      auto tensor = at::empty(shape, options);
      std::memcpy(tensor.data_ptr(), data, end - begin);
      tensors[key] = tensor;
    }
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return Invalid(path, absl::StrCat("tensors ", ranges[i - 1].key, " and ", ranges[i].key, " overlap"));
    }
  }
  return tensors;
}

namespace {

// The bytes [first, end) a CPU tensor spans, from its first element to one past its last over its
// strides; {0, 0} for an empty or undefined tensor.
std::pair<uintptr_t, uintptr_t> Extent(const at::Tensor& tensor) {
  if (!tensor.defined() || !tensor.device().is_cpu() || tensor.numel() == 0) return {0, 0};
  const uintptr_t first = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  uintptr_t end = first + tensor.element_size();
  for (int64_t d = 0; d < tensor.dim(); ++d) {
    if (tensor.stride(d) < 0) return {0, 0};
    end += static_cast<uintptr_t>((tensor.size(d) - 1) * tensor.stride(d)) * tensor.element_size();
  }
  return {first, end};
}

// Whether [first, end) lies in one live mapping; the caller holds the ranges' mutex.
bool InOneMapping(const MappedRanges& ranges, uintptr_t first, uintptr_t end) {
  if (end == 0) return false;
  auto it = ranges.ends.upper_bound(first);
  if (it == ranges.ends.begin()) return false;
  --it;
  return end <= it->second;
}

}  // namespace

bool InMappedFile(const at::Tensor& tensor) {
  const auto [first, end] = Extent(tensor);
  MappedRanges& ranges = TheMappedRanges();
  std::lock_guard<std::mutex> lock(ranges.mutex);
  return InOneMapping(ranges, first, end);
}

void ReleaseMappedPages(const at::Tensor& tensor) {
  const auto [first, end] = Extent(tensor);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  // Whole pages only: a page at either end may hold a neighbour's bytes too.
  const uintptr_t begin_page = (first + page - 1) / page * page, end_page = end / page * page;
  MappedRanges& ranges = TheMappedRanges();
  std::lock_guard<std::mutex> lock(ranges.mutex);  // the mapping stays while the advice runs
  if (!InOneMapping(ranges, first, end) || end_page <= begin_page) return;
  madvise(reinterpret_cast<void*>(begin_page), end_page - begin_page, MADV_DONTNEED);
}

absl::Status WriteSafetensors(const std::string& path, const StateDict& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [key, tensor] : tensors) {  // std::map: keys sorted
    const DtypeInfo* dtype = tensor.defined() ? FindDtype(tensor.scalar_type()) : nullptr;
    if (dtype == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("cannot write tensor ", key, " to ", path,
                                                     ": unsupported or undefined dtype"));
    }
    contiguous.push_back(tensor.detach().to(at::kCPU).contiguous());
    const uint64_t size = contiguous.back().nbytes();
    header[key] = {{"dtype", dtype->name}, {"shape", tensor.sizes().vec()}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  uint64_t length = header_text.size();
  char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out.write(length_bytes, 8);
  out.write(header_text.data(), header_text.size());
  for (const auto& tensor : contiguous) {
    out.write(static_cast<const char*>(tensor.data_ptr()), tensor.nbytes());
  }
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace anoclip::io
