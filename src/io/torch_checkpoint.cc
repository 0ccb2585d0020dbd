// `torch.save` zip checkpoints through a restricted unpickler. libtorch 1.13's pickle_load fails
// on OrderedDict state dicts, and a general unpickler would execute arbitrary globals; this one
// knows only the opcodes and globals a state dict uses (like torch.load(weights_only=True)).
#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include <cstring>
#include <map>
#include <memory>
#include <type_traits>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "io/state_dict.h"

namespace anoclip::io {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Global {
  std::string module, name;
};
struct Mark {};
struct Storage {
  at::ScalarType dtype;
  std::string key;
};
struct Tuple {
  std::vector<ValuePtr> items;
};
struct List {
  std::vector<ValuePtr> items;
};
struct Dict {
  std::vector<std::pair<ValuePtr, ValuePtr>> items;
};

struct Value {
  std::variant<std::monostate, bool, int64_t, double, std::string, Global, Mark, Storage, Tuple, List,
               Dict, at::Tensor>
      v;
};

ValuePtr Make(decltype(Value::v) v) { return std::make_shared<Value>(Value{std::move(v)}); }

const std::map<std::string, at::ScalarType>& StorageTypes() {
  static const auto* types = new std::map<std::string, at::ScalarType>{
      {"FloatStorage", at::kFloat}, {"HalfStorage", at::kHalf}, {"BFloat16Storage", at::kBFloat16},
      {"DoubleStorage", at::kDouble}, {"LongStorage", at::kLong}, {"IntStorage", at::kInt},
      {"ByteStorage", at::kByte}, {"BoolStorage", at::kBool}};
  return *types;
}

bool AllowedGlobal(const Global& g) {
  if (g.module == "collections" && g.name == "OrderedDict") return true;
  if (g.module == "torch._utils" && (g.name == "_rebuild_tensor_v2" || g.name == "_rebuild_parameter")) return true;
  return g.module == "torch" && StorageTypes().count(g.name) > 0;
}

class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, caffe2::serialize::PyTorchStreamReader* reader)
      : data_(data), size_(size), reader_(reader) {}

  // Values may nest deeply or, through the memo, contain themselves: freeing them by plain
  // reference counting would recurse once per level (a stack overflow) or leak the cycle. Every
  // value is held in values_, so emptying each container frees nothing recursively. The values
  // Run returned are unusable afterwards.
  ~Unpickler() {
    for (const ValuePtr& value : values_) {
      std::visit(
          [](auto& v) {
            using T = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<T, Tuple> || std::is_same_v<T, List> || std::is_same_v<T, Dict>) {
              auto items = std::move(v.items);  // freed here, each item still held by values_
            }
          },
          value->v);
    }
  }

  absl::StatusOr<ValuePtr> Run() {
    while (true) {
      uint8_t op;
      if (!Read(&op, 1)) return Truncated();
      switch (op) {
        case 0x80: {  // PROTO
          uint8_t version;
          if (!Read(&version, 1)) return Truncated();
          break;
        }
        case 0x95: {  // FRAME
          if (!Skip(8)) return Truncated();
          break;
        }
        case '}': Push(Make(Dict{})); break;
        case ']': Push(Make(List{})); break;
        case ')': Push(Make(Tuple{})); break;
        case '(': Push(Make(Mark{})); break;
        case 'N': Push(Make(std::monostate{})); break;
        case 0x88: Push(Make(true)); break;
        case 0x89: Push(Make(false)); break;
        case 'X': case 0x8c: case 0x8d: {  // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
          uint64_t length;
          if (!ReadLength(op == 0x8c ? 1 : op == 'X' ? 4 : 8, &length)) return Truncated();
          if (length > size_ - pos_) return Truncated();
          Push(Make(std::string(reinterpret_cast<const char*>(data_ + pos_), length)));
          pos_ += length;
          break;
        }
        case 'K': case 'M': case 'J': {  // BININT1, BININT2, BININT
          const int bytes = op == 'K' ? 1 : op == 'M' ? 2 : 4;
          uint64_t raw;
          if (!ReadLength(bytes, &raw)) return Truncated();
          int64_t value = op == 'J' ? static_cast<int32_t>(raw) : static_cast<int64_t>(raw);
          Push(Make(value));
          break;
        }
        case 0x8a: {  // LONG1
          uint8_t n;
          if (!Read(&n, 1) || n > 8 || n > size_ - pos_) return Invalid("LONG1 wider than 64 bits or truncated");
          int64_t value = 0;
          for (int i = 0; i < n; ++i) value |= static_cast<int64_t>(data_[pos_ + i]) << (8 * i);
          if (n > 0 && n < 8 && (data_[pos_ + n - 1] & 0x80)) value -= int64_t{1} << (8 * n);
          pos_ += n;
          Push(Make(value));
          break;
        }
        case 'G': {  // BINFLOAT, big-endian
          uint8_t bytes[8];
          if (!Read(bytes, 8)) return Truncated();
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | bytes[i];
          double value;
          std::memcpy(&value, &bits, 8);
          Push(Make(value));
          break;
        }
        case 'q': case 'r': case 0x94: {  // BINPUT, LONG_BINPUT, MEMOIZE
          uint64_t index = memo_.size();
          if (op != 0x94 && !ReadLength(op == 'q' ? 1 : 4, &index)) return Truncated();
          if (stack_.empty()) return Invalid("memo put on an empty stack");
          if (index > (1u << 24)) return Invalid("memo index too large");
          memo_[index] = stack_.back();
          break;
        }
        case 'h': case 'j': {  // BINGET, LONG_BINGET
          uint64_t index;
          if (!ReadLength(op == 'h' ? 1 : 4, &index)) return Truncated();
          auto it = memo_.find(index);
          if (it == memo_.end()) return Invalid("memo get of an unknown index");
          Push(it->second);
          break;
        }
        case 't': {  // TUPLE
          auto items = PopToMark();
          if (!items.ok()) return items.status();
          Push(Make(Tuple{std::move(items).value()}));
          break;
        }
        case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
          const size_t n = op - 0x84;
          if (stack_.size() < n) return Invalid("tuple of more items than the stack holds");
          Tuple tuple{std::vector<ValuePtr>(stack_.end() - n, stack_.end())};
          stack_.resize(stack_.size() - n);
          Push(Make(std::move(tuple)));
          break;
        }
        case 's': case 'u': {  // SETITEM, SETITEMS
          std::vector<ValuePtr> items;
          if (op == 's') {
            if (stack_.size() < 3) return Invalid("SETITEM on a short stack");
            items.assign(stack_.end() - 2, stack_.end());
            stack_.resize(stack_.size() - 2);
          } else {
            auto popped = PopToMark();
            if (!popped.ok()) return popped.status();
            items = std::move(popped).value();
          }
          if (stack_.empty() || !std::holds_alternative<Dict>(stack_.back()->v) || items.size() % 2 != 0) {
            return Invalid("SETITEM(S) without a dict");
          }
          auto& dict = std::get<Dict>(stack_.back()->v);
          for (size_t i = 0; i < items.size(); i += 2) dict.items.emplace_back(items[i], items[i + 1]);
          break;
        }
        case 'a': case 'e': {  // APPEND, APPENDS
          std::vector<ValuePtr> items;
          if (op == 'a') {
            if (stack_.size() < 2) return Invalid("APPEND on a short stack");
            items.push_back(Pop());
          } else {
            auto popped = PopToMark();
            if (!popped.ok()) return popped.status();
            items = std::move(popped).value();
          }
          if (stack_.empty() || !std::holds_alternative<List>(stack_.back()->v)) return Invalid("APPEND without a list");
          auto& list = std::get<List>(stack_.back()->v);
          list.items.insert(list.items.end(), items.begin(), items.end());
          break;
        }
        case 'c': {  // GLOBAL module\nname\n
          std::string module, name;
          if (!ReadLine(&module) || !ReadLine(&name)) return Truncated();
          Global global{module, name};
          if (!AllowedGlobal(global)) return Refused(global);
          Push(Make(global));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          if (stack_.size() < 2) return Invalid("STACK_GLOBAL on a short stack");
          auto name = Pop(), module = Pop();
          if (!std::holds_alternative<std::string>(module->v) || !std::holds_alternative<std::string>(name->v)) {
            return Invalid("STACK_GLOBAL needs two strings");
          }
          Global global{std::get<std::string>(module->v), std::get<std::string>(name->v)};
          if (!AllowedGlobal(global)) return Refused(global);
          Push(Make(global));
          break;
        }
        case 'Q': {  // BINPERSID
          if (stack_.empty()) return Invalid("BINPERSID on an empty stack");
          auto storage = PersistentLoad(Pop());
          if (!storage.ok()) return storage.status();
          Push(std::move(storage).value());
          break;
        }
        case 'R': {  // REDUCE
          if (stack_.size() < 2) return Invalid("REDUCE on a short stack");
          auto args = Pop(), callable = Pop();
          auto result = Reduce(callable, args);
          if (!result.ok()) return result.status();
          Push(std::move(result).value());
          break;
        }
        case 'b': {  // BUILD: a state dict's _metadata attribute; nothing to restore
          if (stack_.size() < 2) return Invalid("BUILD on a short stack");
          Pop();
          break;
        }
        case '.':  // STOP
          if (stack_.size() != 1) return Invalid("STOP with a malformed stack");
          return stack_.back();
        default:
          return Invalid(absl::StrCat("unsupported pickle opcode 0x", absl::Hex(op)));
      }
    }
  }

 private:
  bool Read(uint8_t* out, size_t n) {
    if (n > size_ - pos_) return false;
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return true;
  }
  bool Skip(size_t n) {
    if (n > size_ - pos_) return false;
    pos_ += n;
    return true;
  }
  bool ReadLength(int bytes, uint64_t* out) {
    uint8_t buffer[8];
    if (!Read(buffer, bytes)) return false;
    *out = 0;
    for (int i = bytes - 1; i >= 0; --i) *out = (*out << 8) | buffer[i];
    return true;
  }
  bool ReadLine(std::string* out) {
    const void* end = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (end == nullptr) return false;
    const size_t length = static_cast<const uint8_t*>(end) - (data_ + pos_);
    out->assign(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length + 1;
    return true;
  }
  void Push(ValuePtr value) {
    values_.push_back(value);
    stack_.push_back(std::move(value));
  }
  ValuePtr Pop() {
    auto value = stack_.back();
    stack_.pop_back();
    return value;
  }
  absl::StatusOr<std::vector<ValuePtr>> PopToMark() {
    for (size_t i = stack_.size(); i-- > 0;) {
      if (std::holds_alternative<Mark>(stack_[i]->v)) {
        std::vector<ValuePtr> items(stack_.begin() + i + 1, stack_.end());
        stack_.resize(i);
        return items;
      }
    }
    return Invalid("no MARK on the stack");
  }
  absl::Status Truncated() { return Invalid("pickle stream is truncated"); }
  absl::Status Invalid(const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("data.pkl at byte ", pos_, ": ", what));
  }
  absl::Status Refused(const Global& g) {
    return absl::InvalidArgumentError(absl::StrCat("refusing global ", g.module, ".", g.name,
                                                   ": a state dict does not use it"));
  }

  // ('storage', torch.XStorage, key, location, numel) -> the record data/<key> as a typed tensor.
  absl::StatusOr<ValuePtr> PersistentLoad(const ValuePtr& pid) {
    const auto* tuple = std::get_if<Tuple>(&pid->v);
    if (tuple == nullptr || tuple->items.size() != 5 ||
        !std::holds_alternative<std::string>(tuple->items[0]->v) ||
        std::get<std::string>(tuple->items[0]->v) != "storage" ||
        !std::holds_alternative<Global>(tuple->items[1]->v) ||
        !std::holds_alternative<std::string>(tuple->items[2]->v) ||
        !std::holds_alternative<int64_t>(tuple->items[4]->v)) {
      return Invalid("malformed persistent id");
    }
    const auto& type = std::get<Global>(tuple->items[1]->v);
    const auto storage_type = StorageTypes().find(type.name);
    if (type.module != "torch" || storage_type == StorageTypes().end()) {
      return Invalid(absl::StrCat("persistent id names ", type.module, ".", type.name, ", not a storage type"));
    }
    const auto dtype = storage_type->second;
    const std::string key = std::get<std::string>(tuple->items[2]->v);
    const int64_t numel = std::get<int64_t>(tuple->items[4]->v);
    if (storages_.count(key) == 0) {
      const std::string record = "data/" + key;
      if (!reader_->hasRecord(record)) return Invalid(absl::StrCat("missing record ", record));
      auto [bytes, size] = reader_->getRecord(record);
      const size_t item = c10::elementSize(dtype);
      if (numel < 0 || static_cast<uint64_t>(numel) > size / item || size != static_cast<size_t>(numel) * item) {
        return Invalid(absl::StrCat("record ", record, " holds ", size, " bytes, not ", numel, " elements"));
      }
      auto storage = at::empty({numel}, at::TensorOptions().dtype(dtype));
      std::memcpy(storage.data_ptr(), bytes.get(), size);
      storages_[key] = storage;
    }
    return Make(Storage{dtype, key});
  }

  static absl::StatusOr<std::vector<int64_t>> Ints(const ValuePtr& value) {
    const auto* tuple = std::get_if<Tuple>(&value->v);
    if (tuple == nullptr) return absl::InvalidArgumentError("expected a tuple of ints");
    std::vector<int64_t> out;
    for (const auto& item : tuple->items) {
      const auto* i = std::get_if<int64_t>(&item->v);
      if (i == nullptr || *i < 0) return absl::InvalidArgumentError("expected non-negative ints");
      out.push_back(*i);
    }
    return out;
  }

  absl::StatusOr<ValuePtr> Reduce(const ValuePtr& callable, const ValuePtr& args) {
    const auto* global = std::get_if<Global>(&callable->v);
    const auto* tuple = std::get_if<Tuple>(&args->v);
    if (global == nullptr || tuple == nullptr) return Invalid("REDUCE of a non-global");
    if (global->name == "OrderedDict") return Make(Dict{});
    if (global->name == "_rebuild_parameter") {
      if (tuple->items.empty() || !std::holds_alternative<at::Tensor>(tuple->items[0]->v)) {
        return Invalid("_rebuild_parameter without a tensor");
      }
      return tuple->items[0];
    }
    if (global->name != "_rebuild_tensor_v2" || tuple->items.size() < 4) {
      return Invalid(absl::StrCat("cannot call ", global->module, ".", global->name));
    }
    const auto* storage = std::get_if<Storage>(&tuple->items[0]->v);
    const auto* offset = std::get_if<int64_t>(&tuple->items[1]->v);
    auto sizes = Ints(tuple->items[2]);
    auto strides = Ints(tuple->items[3]);
    if (storage == nullptr || offset == nullptr || !sizes.ok() || !strides.ok() ||
        sizes->size() != strides->size() || *offset < 0) {
      return Invalid("malformed _rebuild_tensor_v2 arguments");
    }
    const auto& data = storages_.at(storage->key);
    // The last element the view reaches, offset + sum((size - 1) * stride), computed without
    // overflow: sizes and strides come from the file and may be as large as int64 allows.
    int64_t extent = *offset;
    bool empty = false, overflow = false;
    for (size_t i = 0; i < sizes->size(); ++i) {
      if ((*sizes)[i] == 0) empty = true;
      int64_t reach = 0;
      overflow = overflow || __builtin_mul_overflow((*sizes)[i] - 1, (*strides)[i], &reach) ||
                 __builtin_add_overflow(extent, reach, &extent);
    }
    if (!empty && (overflow || extent >= data.numel())) {
      return Invalid(absl::StrCat("tensor view past the end of storage ", storage->key));
    }
    return Make(data.as_strided(*sizes, *strides, *offset));
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  caffe2::serialize::PyTorchStreamReader* reader_;
  std::vector<ValuePtr> values_;  // every value pushed, so that the destructor can free them flat
  std::vector<ValuePtr> stack_;
  std::map<uint64_t, ValuePtr> memo_;
  std::map<std::string, at::Tensor> storages_;
};

}  // namespace

absl::StatusOr<StateDict> ReadTorchCheckpoint(const std::string& path) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("data.pkl")) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no data.pkl; not a torch.save checkpoint"));
    }
    auto [pickle, size] = reader.getRecord("data.pkl");
    Unpickler unpickler(static_cast<const uint8_t*>(pickle.get()), size, &reader);
    auto root = unpickler.Run();
    if (!root.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", root.status().message()));
    const auto* dict = std::get_if<Dict>(&(*root)->v);
    if (dict == nullptr) return absl::InvalidArgumentError(absl::StrCat(path, ": the pickle is not a state dict"));
    StateDict tensors;
    for (const auto& [key, value] : dict->items) {
      const auto* name = std::get_if<std::string>(&key->v);
      const auto* tensor = std::get_if<at::Tensor>(&value->v);
      if (name == nullptr || tensor == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": state dict entries must map names to tensors"));
      }
      tensors[*name] = tensor->contiguous();
    }
    return tensors;
  } catch (const c10::Error& error) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a readable torch.save zip: ", error.what_without_backtrace()));
  } catch (const std::exception& error) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", error.what()));
  }
}

}  // namespace anoclip::io
