#include "image/codec_probe.h"

#include <algorithm>
#include <csetjmp>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include <jpeglib.h>
#include <png.h>
#include <tiffio.h>
#include <webp/decode.h>

#include "absl/strings/str_cat.h"

namespace anoclip::image {
namespace {

absl::Status Unparsable(const std::string& format, const char* why) {
  return absl::InvalidArgumentError(absl::StrCat("cannot decode ", format, " image: ", why));
}

// The functions that call setjmp hold no C++ object with a destructor: longjmp would skip it.

struct MemoryReader {
  const uint8_t* data;
  size_t size;
  size_t pos;
};

// ---- PNG: IHDR as libpng reads it, after every chunk before the first IDAT.

struct PngError {
  std::jmp_buf jump;
  char message[200];
};

void PngErrorExit(png_structp png, png_const_charp message) {
  auto* error = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(error->message, sizeof(error->message), "%s", message);
  std::longjmp(error->jump, 1);
}
void PngIgnoreWarning(png_structp, png_const_charp) {}

void PngRead(png_structp png, png_bytep out, png_size_t length) {
  auto* reader = static_cast<MemoryReader*>(png_get_io_ptr(png));
  if (length > reader->size - reader->pos) png_error(png, "file ends inside a chunk");
  std::memcpy(out, reader->data + reader->pos, length);
  reader->pos += length;
}

bool ProbePng(const uint8_t* data, size_t size, CodecGeometry* geometry, PngError* error) {
  MemoryReader reader{data, size, 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, error, PngErrorExit, PngIgnoreWarning);
  if (png == nullptr) {
    std::snprintf(error->message, sizeof(error->message), "libpng could not start");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    std::snprintf(error->message, sizeof(error->message), "libpng could not start");
    return false;
  }
  if (setjmp(error->jump)) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, &reader, PngRead);
  png_read_info(png, info);
  geometry->width = png_get_image_width(png, info);
  geometry->height = png_get_image_height(png, info);
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

// ---- JPEG: the frame header as libjpeg reads it, up to the first scan.

struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void JpegErrorExit(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  info->err->format_message(info, error->message);
  std::longjmp(error->jump, 1);
}
void JpegIgnoreMessage(j_common_ptr, int) {}

bool ProbeJpeg(const uint8_t* data, size_t size, CodecGeometry* geometry, JpegError* error) {
  jpeg_decompress_struct info;
  info.err = jpeg_std_error(&error->manager);
  error->manager.error_exit = JpegErrorExit;
  error->manager.emit_message = JpegIgnoreMessage;
  if (setjmp(error->jump)) {
    jpeg_destroy_decompress(&info);
    return false;
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, data, static_cast<unsigned long>(size));
  jpeg_read_header(&info, TRUE);
  geometry->width = info.image_width;
  geometry->height = info.image_height;
  jpeg_destroy_decompress(&info);
  return true;
}

// ---- TIFF: the first directory as libtiff reads it (libtiff keeps the first of repeated tags),
// with the strip or tile that OpenCV buffers whole.

tmsize_t TiffRead(thandle_t handle, void* out, tmsize_t length) {
  auto* reader = static_cast<MemoryReader*>(handle);
  const size_t n = std::min(static_cast<size_t>(length), reader->size - reader->pos);
  std::memcpy(out, reader->data + reader->pos, n);
  reader->pos += n;
  return static_cast<tmsize_t>(n);
}
tmsize_t TiffWrite(thandle_t, void*, tmsize_t) { return 0; }
toff_t TiffSeek(thandle_t handle, toff_t offset, int whence) {
  auto* reader = static_cast<MemoryReader*>(handle);
  const uint64_t base = whence == SEEK_CUR ? reader->pos : whence == SEEK_END ? reader->size : 0;
  if (offset > std::numeric_limits<uint64_t>::max() - base) return static_cast<toff_t>(-1);
  const uint64_t target = base + offset;
  if (target > reader->size) return static_cast<toff_t>(-1);
  reader->pos = static_cast<size_t>(target);
  return target;
}
int TiffClose(thandle_t) { return 0; }
toff_t TiffSize(thandle_t handle) { return static_cast<MemoryReader*>(handle)->size; }
int TiffMap(thandle_t, void**, toff_t*) { return 0; }
void TiffUnmap(thandle_t, void*, toff_t) {}

int TiffKeepError(TIFF*, void* user_data, const char*, const char* format, va_list args) {
  auto* message = static_cast<std::string*>(user_data);
  if (message->empty()) {
    char text[200];
    std::vsnprintf(text, sizeof(text), format, args);
    *message = text;
  }
  return 1;  // handled: nothing goes to stderr
}
int TiffIgnoreWarning(TIFF*, void*, const char*, const char*, va_list) { return 1; }

absl::StatusOr<CodecGeometry> ProbeTiff(const uint8_t* data, size_t size) {
  // Directory reading needs kilobytes; a directory that asks for more is hostile.
  constexpr tmsize_t kMaxSingleAllocation = 16 << 20;
  MemoryReader reader{data, size, 0};
  std::string message;
  TIFFOpenOptions* options = TIFFOpenOptionsAlloc();
  if (options == nullptr) return absl::ResourceExhaustedError("libtiff could not start");
  TIFFOpenOptionsSetMaxSingleMemAlloc(options, kMaxSingleAllocation);
  TIFFOpenOptionsSetErrorHandlerExtR(options, TiffKeepError, &message);
  TIFFOpenOptionsSetWarningHandlerExtR(options, TiffIgnoreWarning, nullptr);
  // "m": no memory mapping; "O": strip and tile offsets are not loaded, only counted.
  TIFF* tiff = TIFFClientOpenExt("image", "rmO", &reader, TiffRead, TiffWrite, TiffSeek, TiffClose, TiffSize,
                                 TiffMap, TiffUnmap, options);
  TIFFOpenOptionsFree(options);
  if (tiff == nullptr) return Unparsable("tiff", message.empty() ? "libtiff cannot read it" : message.c_str());
  uint32_t width = 0, height = 0;
  CodecGeometry geometry;
  const bool sized = TIFFGetField(tiff, TIFFTAG_IMAGEWIDTH, &width) == 1 &&
                     TIFFGetField(tiff, TIFFTAG_IMAGELENGTH, &height) == 1;
  geometry.width = width;
  geometry.height = height;
  uint32_t block_width = width, block_height = 0;
  if (TIFFIsTiled(tiff)) {
    TIFFGetField(tiff, TIFFTAG_TILEWIDTH, &block_width);
    TIFFGetField(tiff, TIFFTAG_TILELENGTH, &block_height);
  } else {
    TIFFGetField(tiff, TIFFTAG_ROWSPERSTRIP, &block_height);
  }
  // As OpenCV's decoder reads them: 0 (and all-ones rows per strip) mean the whole image.
  if (block_width == 0) block_width = width;
  if (block_height == 0 || block_height == std::numeric_limits<uint32_t>::max()) block_height = height;
  geometry.scratch_width = block_width;
  geometry.scratch_height = block_height;
  // Each strip or tile needs at least a 4-byte offset in the file; libtiff allocates its offset
  // tables from this count, so a count the file cannot hold is refused before they are loaded.
  const uint64_t blocks = TIFFIsTiled(tiff) ? TIFFNumberOfTiles(tiff) : TIFFNumberOfStrips(tiff);
  TIFFClose(tiff);
  if (!sized) return Unparsable("tiff", "no ImageWidth or ImageLength");
  if (blocks > size / 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("tiff image has ", blocks, " strips or tiles; a ", size, "-byte file cannot hold them"));
  }
  return geometry;
}

}  // namespace

absl::StatusOr<CodecGeometry> ProbeWithCodec(const std::string& format, std::string_view bytes) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  CodecGeometry geometry;
  if (format == "png") {
    PngError error{};
    if (!ProbePng(data, bytes.size(), &geometry, &error)) return Unparsable(format, error.message);
    return geometry;
  }
  if (format == "jpeg") {
    JpegError error{};
    if (!ProbeJpeg(data, bytes.size(), &geometry, &error)) return Unparsable(format, error.message);
    return geometry;
  }
  if (format == "tiff") return ProbeTiff(data, bytes.size());
  if (format == "webp") {
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(data, bytes.size(), &features) != VP8_STATUS_OK) {
      return Unparsable(format, "libwebp cannot read its header");
    }
    if (features.has_animation) return Unparsable(format, "animated WebP is not supported");
    geometry.width = features.width;
    geometry.height = features.height;
    return geometry;
  }
  return absl::UnimplementedError(absl::StrCat("no codec probe for ", format));
}

}  // namespace anoclip::image
