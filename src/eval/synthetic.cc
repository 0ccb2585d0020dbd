#include "eval/synthetic.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include <map>
#include "common/status_macros.h"

namespace anoclip::eval {
namespace fs = std::filesystem;
namespace {

const std::vector<std::string> kMvtecClasses = {"bottle", "carpet",  "metal_nut", "wood",  "capsule",
                                                "grid",   "hazelnut", "leather",  "pill",  "tile",
                                                "screw",  "cable",   "toothbrush", "transistor", "zipper"};
const std::vector<std::string> kVisaClasses = {"macaroni1", "pcb1",      "candle", "capsules",
                                               "cashew",    "chewinggum", "fryum", "macaroni2",
                                               "pcb2",      "pcb3",      "pcb4",   "pipe_fryum"};
const std::vector<std::string> kDefects = {"scratch", "spot", "crack"};

std::string ClassName(const std::vector<std::string>& names, int index) {
  return index < static_cast<int>(names.size()) ? names[index] : absl::StrCat("class", index);
}

cv::Scalar RandomColour(cv::RNG& rng, int low, int high) {
  return cv::Scalar(rng.uniform(low, high), rng.uniform(low, high), rng.uniform(low, high));
}

// A defect-free part: stripes and noise for textures, a lit disc or box on a plain ground for objects.
cv::Mat MakePart(cv::RNG& rng, cv::Size size, bool texture, const cv::Scalar& base) {
  cv::Mat image(size, CV_8UC3, base);
  if (texture) {
    const double period = 4 + rng.uniform(0.0, 8.0), angle = rng.uniform(0.0, CV_PI);
    for (int y = 0; y < size.height; ++y) {
      for (int x = 0; x < size.width; ++x) {
        const double wave = 25 * std::sin((x * std::cos(angle) + y * std::sin(angle)) * 2 * CV_PI / period);
        auto& pixel = image.at<cv::Vec3b>(y, x);
        for (int c = 0; c < 3; ++c) pixel[c] = cv::saturate_cast<uint8_t>(base[c] + wave);
      }
    }
  } else {
    const cv::Point centre(size.width / 2 + rng.uniform(-2, 3), size.height / 2 + rng.uniform(-2, 3));
    const int radius = std::min(size.width, size.height) * 3 / 8;
    const cv::Scalar colour = RandomColour(rng, 120, 230);
    if (rng.uniform(0, 2) == 0) {
      cv::circle(image, centre, radius, colour, cv::FILLED);
    } else {
      cv::rectangle(image, cv::Rect(centre.x - radius, centre.y - radius * 2 / 3, 2 * radius, radius * 4 / 3), colour,
                    cv::FILLED);
    }
  }
  cv::Mat noise(size, CV_8UC3);
  rng.fill(noise, cv::RNG::UNIFORM, 0, 12);
  cv::add(image, noise, image);
  return image;
}

// Paints one defect into `image` and returns its exact mask (255 where painted).
cv::Mat PaintDefect(cv::RNG& rng, cv::Mat& image, const std::string& defect) {
  const int w = image.cols, h = image.rows, unit = std::max(2, std::min(w, h) / 16);
  cv::Mat mask = cv::Mat::zeros(image.size(), CV_8U);
  auto point = [&] { return cv::Point(rng.uniform(w / 4, 3 * w / 4), rng.uniform(h / 4, 3 * h / 4)); };
  if (defect == "scratch") {
    cv::line(mask, point(), point(), cv::Scalar(255), std::max(1, unit / 2), cv::LINE_8);
  } else if (defect == "spot") {
    cv::ellipse(mask, point(), cv::Size(unit + rng.uniform(0, unit), unit / 2 + rng.uniform(1, unit)),
                rng.uniform(0.0, 180.0), 0, 360, cv::Scalar(255), cv::FILLED, cv::LINE_8);
  } else {
    std::vector<cv::Point> crack = {point()};
    for (int i = 0; i < 4; ++i) crack.push_back(crack.back() + cv::Point(rng.uniform(-unit * 2, unit * 2 + 1),
                                                                       rng.uniform(-unit * 2, unit * 2 + 1)));
    cv::polylines(mask, crack, false, cv::Scalar(255), std::max(1, unit / 3), cv::LINE_8);
  }
  image.setTo(RandomColour(rng, 0, 80), mask);
  return mask;
}

absl::Status Write(const fs::path& path, const cv::Mat& image) {
  std::error_code error;
  fs::create_directories(path.parent_path(), error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", path.parent_path().string()));
  bool ok = false;
  try {
    ok = cv::imwrite(path.string(), image.channels() == 3 ? [&] {
      cv::Mat bgr;
      cv::cvtColor(image, bgr, cv::COLOR_RGB2BGR);
      return bgr;
    }() : image);
  } catch (const cv::Exception&) {
    ok = false;
  }
  if (!ok) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

struct Part {
  cv::Mat image, mask;  // mask empty when defect-free
  std::string defect;   // "good" or the defect type
};

// The test parts of one class, defect-free first; the RNG is the class's own.
std::vector<Part> MakeParts(cv::RNG& rng, int count, int normal, cv::Size size, bool texture) {
  const cv::Scalar base = RandomColour(rng, 40, 200);
  std::vector<Part> parts;
  for (int i = 0; i < count; ++i) {
    Part part{MakePart(rng, size, texture, base), {}, "good"};
    if (i >= normal) {
      part.defect = kDefects[(i - normal) % kDefects.size()];
      part.mask = PaintDefect(rng, part.image, part.defect);
    }
    parts.push_back(std::move(part));
  }
  return parts;
}

absl::Status MakeMvtec(const SyntheticOptions& options) {
  const cv::Size size(options.size, options.size);
  for (int c = 0; c < options.classes; ++c) {
    const std::string name = ClassName(kMvtecClasses, c);
    cv::RNG rng(options.seed * 1000003 + c + 1);
    const fs::path dir = fs::path(options.out) / name;
    const bool texture = options.is_texture(name);
    // A few defect-free training images, enough for `anoclip calibrate`.
    int index = 0;
    for (const Part& part : MakeParts(rng, 5, 5, size, texture)) {
      ANOCLIP_RETURN_IF_ERROR(Write(dir / "train" / "good" / absl::StrFormat("%03d.png", index++), part.image));
    }
    std::map<std::string, int> next;
    for (const Part& part : MakeParts(rng, options.images, std::max(1, options.images / 2), size, texture)) {
      const std::string stem = absl::StrFormat("%03d", next[part.defect]++);
      ANOCLIP_RETURN_IF_ERROR(Write(dir / "test" / part.defect / (stem + ".png"), part.image));
      if (!part.mask.empty()) {
        ANOCLIP_RETURN_IF_ERROR(Write(dir / "ground_truth" / part.defect / (stem + "_mask.png"), part.mask));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status MakeVisa(const SyntheticOptions& options) {
  const cv::Size size(options.size, std::max(kMinSyntheticSize, options.size * 3 / 4));
  std::string csv = "object,split,label,image,mask\n";
  for (int c = 0; c < options.classes; ++c) {
    const std::string name = ClassName(kVisaClasses, c);
    cv::RNG rng(options.seed * 1000003 + c + 1);
    int normal = 0, anomaly = 0;
    // Training rows the evaluation must skip, then the test rows.
    for (const std::string split : {"train", "test"}) {
      const bool train = split == "train";
      const int count = train ? 2 : options.images, normal_count = train ? 2 : std::max(1, options.images / 2);
      for (const Part& part : MakeParts(rng, count, normal_count, size, options.is_texture(name))) {
        const bool good = part.defect == "good";
        const std::string stem = absl::StrFormat("%04d", good ? normal++ : anomaly++);
        const std::string image = absl::StrCat(name, "/Data/Images/", good ? "Normal/" : "Anomaly/", stem, ".JPG");
        const std::string mask = good ? "" : absl::StrCat(name, "/Data/Masks/Anomaly/", stem, ".png");
        ANOCLIP_RETURN_IF_ERROR(Write(fs::path(options.out) / image, part.image));
        if (!good) ANOCLIP_RETURN_IF_ERROR(Write(fs::path(options.out) / mask, part.mask));
        absl::StrAppend(&csv, name, ",", split, ",", good ? "normal" : "anomaly", ",", image, ",", mask, "\n");
      }
    }
  }
  const fs::path csv_path = fs::path(options.out) / "split_csv" / "1cls.csv";
  std::error_code error;
  fs::create_directories(csv_path.parent_path(), error);
  std::ofstream out(csv_path, std::ios::binary);
  out << csv;
  if (!out.flush()) return absl::PermissionDeniedError(absl::StrCat("cannot write ", csv_path.string()));
  return absl::OkStatus();
}

absl::Status MakeFolder(const SyntheticOptions& options) {
  cv::RNG rng(options.seed * 1000003 + 1);
  int index = 0;
  const int normal = std::max(1, options.images / 2);
  for (const Part& part : MakeParts(rng, options.images, normal, cv::Size(options.size, options.size), false)) {
    const std::string stem = absl::StrFormat("%03d", index++);
    const bool good = part.defect == "good";
    ANOCLIP_RETURN_IF_ERROR(Write(fs::path(options.out) / (good ? "good" : "defect") / (stem + ".png"), part.image));
    if (!good) ANOCLIP_RETURN_IF_ERROR(Write(fs::path(options.out) / "masks" / (stem + ".png"), part.mask));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSyntheticOptions(const SyntheticOptions& options) {
  if (options.out.empty()) return absl::InvalidArgumentError("--out is empty");
  if (options.classes < 1 || options.classes > kMaxSyntheticClasses) {
    return absl::InvalidArgumentError(absl::StrCat("--classes must be 1..", kMaxSyntheticClasses));
  }
  if (options.layout == Layout::kFolder && options.classes != 1) {
    return absl::InvalidArgumentError("the folder layout holds one class; use --classes 1");
  }
  if (options.images < 2 || options.images > kMaxSyntheticImages) {
    return absl::InvalidArgumentError(absl::StrCat("--images must be 2..", kMaxSyntheticImages,
                                                   " (at least one defect-free and one defective)"));
  }
  if (options.size < kMinSyntheticSize || options.size > kMaxSyntheticSize) {
    return absl::InvalidArgumentError(absl::StrCat("--size must be ", kMinSyntheticSize, "..", kMaxSyntheticSize));
  }
  return absl::OkStatus();
}

absl::Status MakeSyntheticDataset(const SyntheticOptions& options) {
  ANOCLIP_RETURN_IF_ERROR(ValidateSyntheticOptions(options));
  switch (options.layout) {
    case Layout::kMvtec:
      return MakeMvtec(options);
    case Layout::kVisa:
      return MakeVisa(options);
    case Layout::kFolder:
      return MakeFolder(options);
  }
  return absl::InvalidArgumentError("unknown layout");
}

}  // namespace anoclip::eval
