#include "worker/models/sana/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/TensorOptions.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "worker/models/sana/json.h"

namespace wmserve::worker::sana {
namespace {

// The reference implementation caps the header at 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeDesc {
  const char* name;
  int64_t element_size;
  std::optional<c10::ScalarType> scalar_type;  // nullopt: recognised but not loadable
};

// Every dtype of the safetensors format, so that a valid file with any of them opens.
constexpr int kNumDtypes = 16;
const DtypeDesc* Dtypes() {
  static const DtypeDesc kDtypes[kNumDtypes] = {
      {"F32", 4, c10::ScalarType::Float},  {"BF16", 2, c10::ScalarType::BFloat16},
      {"F16", 2, c10::ScalarType::Half},   {"I64", 8, c10::ScalarType::Long},
      {"F64", 8, std::nullopt},            {"I32", 4, std::nullopt},
      {"I16", 2, std::nullopt},            {"I8", 1, std::nullopt},
      {"U8", 1, std::nullopt},             {"BOOL", 1, std::nullopt},
      {"U16", 2, std::nullopt},            {"U32", 4, std::nullopt},
      {"U64", 8, std::nullopt},            {"F8_E4M3", 1, std::nullopt},
      {"F8_E5M2", 1, std::nullopt},        {"F8_E8M0", 1, std::nullopt},
  };
  return kDtypes;
}

const DtypeDesc* FindDtype(const std::string& name) {
  for (int i = 0; i < kNumDtypes; ++i) {
    if (name == Dtypes()[i].name) return &Dtypes()[i];
  }
  return nullptr;
}

std::string Basename(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

bool HostIsLittleEndian() {
  const uint16_t probe = 1;
  uint8_t first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

}  // namespace

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping(void* a, size_t s) : addr(a), size(s) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr != nullptr) munmap(addr, size);
  }
};

int64_t SafetensorsTensorInfo::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(shape[i]);
  }
  out += ']';
  return out;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::Open(const std::string& path) {
  auto fail = [&](const std::string& what) -> SafetensorsError {
    return SafetensorsError(path + ": " + what);
  };
  if (!HostIsLittleEndian()) throw fail("safetensors needs a little-endian host");

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw fail(std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw fail("not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw fail("file is " + std::to_string(file_size) +
               " bytes, too short for the 8-byte header length");
  }
  void* addr = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (addr == MAP_FAILED) throw fail(std::string("mmap failed: ") + std::strerror(mmap_errno));

  SafetensorsFile file;
  file.path_ = path;
  file.mapping_ = std::make_shared<Mapping>(addr, file_size);
  const auto* bytes = static_cast<const uint8_t*>(addr);

  const uint64_t header_len = ReadLe64(bytes);
  if (header_len == 0) throw fail("header length is 0");
  if (header_len > kMaxHeaderBytes) {
    throw fail("header length " + std::to_string(header_len) + " exceeds the " +
               std::to_string(kMaxHeaderBytes) + "-byte limit (corrupt file?)");
  }
  if (header_len > file_size - 8) {
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the " +
               std::to_string(file_size) + "-byte file");
  }
  file.data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - file.data_start_;

  JsonValue header;
  try {
    header = ParseJson(
        std::string_view(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(header_len)));
  } catch (const JsonError& e) {
    throw fail(std::string("invalid header: ") + e.what());
  }
  if (!header.is_object()) {
    throw fail(std::string("header is ") + JsonValue::TypeName(header.type()) +
               ", expected an object");
  }

  for (const auto& [name, entry] : header.AsObject()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw fail("__metadata__ is not an object");
      for (const auto& [key, value] : entry.AsObject()) {
        if (!value.is_string()) {
          throw fail("__metadata__ entry '" + key + "' is " + JsonValue::TypeName(value.type()) +
                     ", expected a string");
        }
        file.metadata_[key] = value.AsString();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) throw fail(where + " is not an object");
    for (const auto& [key, unused] : entry.AsObject()) {
      (void)unused;
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        throw fail(where + " has unknown field '" + key + "'");
      }
    }
    const JsonValue* dtype = entry.Find("dtype");
    const JsonValue* shape = entry.Find("shape");
    const JsonValue* offsets = entry.Find("data_offsets");
    if (dtype == nullptr || shape == nullptr || offsets == nullptr) {
      throw fail(where + " needs 'dtype', 'shape' and 'data_offsets'");
    }
    SafetensorsTensorInfo info;
    info.name = name;
    if (!dtype->is_string()) throw fail(where + ": dtype is not a string");
    info.dtype = dtype->AsString();
    const DtypeDesc* desc = FindDtype(info.dtype);
    if (desc == nullptr) throw fail(where + " has unknown dtype '" + info.dtype + "'");

    if (!shape->is_array()) throw fail(where + ": shape is not an array");
    uint64_t numel = 1;
    for (const JsonValue& dim : shape->AsArray()) {
      if (!dim.is_integer() || dim.AsInt() < 0) {
        throw fail(where + ": shape entries must be non-negative integers");
      }
      const auto d = static_cast<uint64_t>(dim.AsInt());
      if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / d) {
        throw fail(where + ": shape overflows");
      }
      numel *= d;
      info.shape.push_back(dim.AsInt());
    }
    const auto elsize = static_cast<uint64_t>(desc->element_size);
    if (numel > std::numeric_limits<uint64_t>::max() / elsize ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw fail(where + ": shape overflows");
    }

    if (!offsets->is_array() || offsets->AsArray().size() != 2 ||
        !offsets->AsArray()[0].is_integer() || !offsets->AsArray()[1].is_integer() ||
        offsets->AsArray()[0].AsInt() < 0 || offsets->AsArray()[1].AsInt() < 0) {
      throw fail(where + ": data_offsets must be [begin, end] with non-negative integers");
    }
    info.data_begin = static_cast<uint64_t>(offsets->AsArray()[0].AsInt());
    info.data_end = static_cast<uint64_t>(offsets->AsArray()[1].AsInt());
    if (info.data_end < info.data_begin) {
      throw fail(where + ": data_offsets [" + std::to_string(info.data_begin) + ", " +
                 std::to_string(info.data_end) + "] end before they begin");
    }
    if (info.data_end > data_size) {
      throw fail(where + ": data_offsets [" + std::to_string(info.data_begin) + ", " +
                 std::to_string(info.data_end) + "] run past the " + std::to_string(data_size) +
                 "-byte data buffer (truncated file?)");
    }
    if (info.data_end - info.data_begin != numel * elsize) {
      throw fail(where + ": data_offsets span " + std::to_string(info.data_end - info.data_begin) +
                 " bytes but " + info.dtype + " " + ShapeString(info.shape) + " needs " +
                 std::to_string(numel * elsize));
    }
    file.tensors_.emplace(name, std::move(info));
  }

  // The byte ranges must tile the data buffer exactly: sorted by offset, each begins where the
  // previous one ended, and the last ends at the end of the file.
  std::vector<const SafetensorsTensorInfo*> by_offset;
  by_offset.reserve(file.tensors_.size());
  for (const auto& [name, info] : file.tensors_) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsTensorInfo* a, const SafetensorsTensorInfo* b) {
              return std::make_pair(a->data_begin, a->data_end) <
                     std::make_pair(b->data_begin, b->data_end);
            });
  uint64_t expected_begin = 0;
  const SafetensorsTensorInfo* previous = nullptr;
  for (const SafetensorsTensorInfo* info : by_offset) {
    if (info->data_begin != expected_begin) {
      if (info->data_begin < expected_begin) {
        throw fail("tensor '" + info->name + "' overlaps tensor '" + previous->name + "' (bytes " +
                   std::to_string(info->data_begin) + " < " + std::to_string(expected_begin) + ")");
      }
      throw fail("data buffer has a hole of " + std::to_string(info->data_begin - expected_begin) +
                 " bytes before tensor '" + info->name + "'");
    }
    expected_begin = info->data_end;
    previous = info;
  }
  if (expected_begin != data_size) {
    throw fail("data buffer is " + std::to_string(data_size) + " bytes but the tensors cover " +
               std::to_string(expected_begin));
  }
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) out.push_back(name);
  return out;
}

const SafetensorsTensorInfo& SafetensorsFile::Info(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    throw SafetensorsError(path_ + ": no tensor named '" + name + "'");
  }
  return it->second;
}

c10::ScalarType SafetensorsFile::ScalarTypeOf(const std::string& name) const {
  const SafetensorsTensorInfo& info = Info(name);
  const DtypeDesc* desc = FindDtype(info.dtype);
  if (desc == nullptr || !desc->scalar_type.has_value()) {
    throw SafetensorsError(path_ + ": tensor '" + name + "' has dtype " + info.dtype +
                           ", which cannot be loaded (supported: F32, BF16, F16, I64)");
  }
  return *desc->scalar_type;
}

const std::string& SafetensorsFile::Metadata(const std::string& key) const {
  const auto it = metadata_.find(key);
  if (it == metadata_.end()) {
    throw SafetensorsError(path_ + ": no __metadata__ entry '" + key + "'");
  }
  return it->second;
}

const uint8_t* SafetensorsFile::DataPointer(const SafetensorsTensorInfo& info) const {
  return static_cast<const uint8_t*>(mapping_->addr) + data_start_ + info.data_begin;
}

at::Tensor SafetensorsFile::View(const std::string& name) const {
  const SafetensorsTensorInfo& info = Info(name);
  const c10::ScalarType type = ScalarTypeOf(name);
  const auto options = at::TensorOptions().dtype(type).device(c10::kCPU);
  const uint8_t* data = DataPointer(info);
  const auto elsize = static_cast<uintptr_t>(c10::elementSize(type));
  if (info.nbytes() == 0 || reinterpret_cast<uintptr_t>(data) % elsize != 0) {
    // Empty or misaligned: a private copy (typed loads from misaligned addresses are UB).
    at::Tensor out = at::empty(info.shape, options);
    if (info.nbytes() != 0) std::memcpy(out.data_ptr(), data, info.nbytes());
    return out;
  }
  std::shared_ptr<Mapping> keep = mapping_;
  return at::from_blob(
      const_cast<uint8_t*>(data), info.shape, [keep](void*) mutable { keep.reset(); }, options);
}

at::Tensor SafetensorsFile::Load(const std::string& name, std::optional<c10::ScalarType> dtype,
                                 std::optional<c10::Device> device) const {
  const at::Tensor view = View(name);
  const auto options = at::TensorOptions()
                           .dtype(dtype.value_or(view.scalar_type()))
                           .device(device.value_or(c10::Device(c10::kCPU)));
  // copy=true: never alias the mapping, even when dtype and device already match.
  return view.to(options, /*non_blocking=*/false, /*copy=*/true);
}

void SafetensorsFile::CheckTensors(const std::map<std::string, std::vector<int64_t>>& expected,
                                   const std::set<std::string>& ignore) const {
  auto ignored = [&](const std::string& name) {
    for (const std::string& pattern : ignore) {
      if (!pattern.empty() && pattern.back() == '*') {
        if (name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1) == 0) return true;
      } else if (pattern == name) {
        return true;
      }
    }
    return false;
  };
  std::vector<std::string> missing, unexpected, misshaped;
  for (const auto& [name, shape] : expected) {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      if (!ignored(name)) missing.push_back(name + " " + ShapeString(shape));
    } else if (it->second.shape != shape) {
      misshaped.push_back(name + ": file " + ShapeString(it->second.shape) + ", model " +
                          ShapeString(shape));
    }
  }
  for (const auto& [name, info] : tensors_) {
    if (expected.count(name) == 0 && !ignored(name)) unexpected.push_back(name);
  }
  if (missing.empty() && unexpected.empty() && misshaped.empty()) return;
  auto join = [](const std::vector<std::string>& items) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += ", ";
      out += items[i];
    }
    return out;
  };
  std::vector<std::string> parts;
  if (!missing.empty()) {
    parts.push_back(std::to_string(missing.size()) + " missing (" + join(missing) + ")");
  }
  if (!unexpected.empty()) {
    parts.push_back(std::to_string(unexpected.size()) + " unexpected (" + join(unexpected) + ")");
  }
  if (!misshaped.empty()) {
    parts.push_back(std::to_string(misshaped.size()) + " mis-shaped (" + join(misshaped) + ")");
  }
  throw SafetensorsError(Basename(path_) + ": " + join(parts));
}

}  // namespace wmserve::worker::sana
