#include "image/pil_resize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace anoclip::image {
namespace {

// Pillow's fixed point for 8-bit images: 32 - 8 - 2 fraction bits.
constexpr int kPrecisionBits = 22;

// Per output pixel: the first input pixel, how many it reads, and their fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out_size * ksize]
};

double Triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc of Resample.c, for the whole input (box 0..in_size).
Coefficients Precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filter_scale;
    int xmin = static_cast<int>(center - support + 0.5);  // truncation, as Pillow's (int) cast
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = Triangle((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = total != 0.0 ? k[x] / total : k[x];
      c.weights[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t Clip8(int32_t sum) {
  const int32_t value = sum >> kPrecisionBits;
  return static_cast<uint8_t>(std::clamp(value, 0, 255));
}

// Rows [row_begin, row_begin + out.rows) of `in`, resampled along x into `out`.
void ResampleHorizontal(const cv::Mat& in, int row_begin, const Coefficients& c, cv::Mat& out) {
  const int channels = in.channels();
  for (int y = 0; y < out.rows; ++y) {
    const uint8_t* src = in.ptr<uint8_t>(row_begin + y);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int xx = 0; xx < out.cols; ++xx) {
      const int32_t* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      for (int ch = 0; ch < channels; ++ch) {
        int32_t sum = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < c.count[xx]; ++x) sum += src[(c.first[xx] + x) * channels + ch] * k[x];
        dst[xx * channels + ch] = Clip8(sum);
      }
    }
  }
}

// Resampled along y; `row_offset` is the first input row the coefficients' bounds count from.
void ResampleVertical(const cv::Mat& in, int row_offset, const Coefficients& c, cv::Mat& out) {
  const int width = in.cols * in.channels();
  for (int yy = 0; yy < out.rows; ++yy) {
    const int32_t* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
    const int first = c.first[yy] - row_offset;
    uint8_t* dst = out.ptr<uint8_t>(yy);
    for (int i = 0; i < width; ++i) {
      int32_t sum = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < c.count[yy]; ++y) sum += in.ptr<uint8_t>(first + y)[i] * k[y];
      dst[i] = Clip8(sum);
    }
  }
}

}  // namespace

cv::Mat ResizeBilinearLikePil(const cv::Mat& image, int width, int height) {
  if (image.depth() != CV_8U || (image.channels() != 1 && image.channels() != 3)) {
    throw std::invalid_argument("ResizeBilinearLikePil takes CV_8UC1 or CV_8UC3");
  }
  if (width <= 0 || height <= 0 || image.empty()) throw std::invalid_argument("ResizeBilinearLikePil: empty size");
  if (image.cols == width && image.rows == height) return image.clone();
  const Coefficients horizontal = Precompute(image.cols, width);
  const Coefficients vertical = Precompute(image.rows, height);
  // Like Pillow, the horizontal pass only computes the input rows the vertical pass reads.
  const int row_first = vertical.first.front();
  const int row_last = vertical.first.back() + vertical.count.back();
  cv::Mat rows = image;
  int row_offset = 0;
  if (image.cols != width) {
    rows.create(row_last - row_first, width, image.type());
    ResampleHorizontal(image, row_first, horizontal, rows);
    row_offset = row_first;
  }
  if (image.rows == height) return rows.isContinuous() ? rows : rows.clone();
  cv::Mat out(height, width, image.type());
  ResampleVertical(rows, row_offset, vertical, out);
  return out;
}

}  // namespace anoclip::image
