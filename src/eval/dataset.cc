#include "eval/dataset.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace anoclip::eval {
namespace fs = std::filesystem;
namespace {

bool IsDirectory(const fs::path& path) {
  std::error_code error;
  return fs::is_directory(path, error);
}

bool IsFile(const fs::path& path) {
  std::error_code error;
  return fs::is_regular_file(path, error);
}

// Entries of `dir` (files or directories), sorted by name.
absl::StatusOr<std::vector<fs::path>> ListSorted(const fs::path& dir, bool directories) {
  std::error_code error;
  std::vector<fs::path> entries;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    const bool is_dir = it->is_directory(error);
    if (directories ? is_dir : (!is_dir && IsImageFileName(it->path().string()))) entries.push_back(it->path());
  }
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot list ", dir.string(), ": ", error.message()));
  std::sort(entries.begin(), entries.end());
  return entries;
}

absl::Status CheckRoot(const std::string& root) {
  if (!IsDirectory(root)) return absl::NotFoundError(absl::StrCat("no dataset directory ", root));
  return absl::OkStatus();
}

// Keeps the sample when its files exist, else records each missing one.
void AddSample(Sample sample, ClassSet& set, std::vector<Problem>& problems) {
  bool ok = true;
  if (!IsFile(sample.image)) {
    problems.push_back({sample.image, "missing image"});
    ok = false;
  }
  if (sample.anomalous && set.has_masks && (sample.mask.empty() || !IsFile(sample.mask))) {
    problems.push_back({sample.mask.empty() ? sample.image : sample.mask,
                        sample.mask.empty() ? "no mask for this defect image" : "missing mask"});
    ok = false;
  }
  if (ok) set.samples.push_back(std::move(sample));
}

absl::StatusOr<std::vector<std::string>> SelectClasses(std::vector<std::string> available,
                                                       const std::vector<std::string>& wanted,
                                                       const std::string& root) {
  std::sort(available.begin(), available.end());
  if (wanted.empty()) {
    if (available.empty()) return absl::NotFoundError(absl::StrCat("no classes found in ", root));
    return available;
  }
  std::vector<std::string> missing;
  for (const auto& name : wanted) {
    if (!std::binary_search(available.begin(), available.end(), name)) missing.push_back(name);
  }
  if (!missing.empty()) {
    return absl::NotFoundError(absl::StrCat("no class ", absl::StrJoin(missing, ", "), " in ", root,
                                            " (it has: ", absl::StrJoin(available, ", "), ")"));
  }
  return wanted;
}

absl::StatusOr<Dataset> ReadMvtec(const std::string& root, const std::vector<std::string>& wanted) {
  ANOCLIP_ASSIGN_OR_RETURN(auto dirs, ListSorted(root, true));
  std::vector<std::string> available;
  for (const auto& dir : dirs) {
    if (IsDirectory(dir / "test")) available.push_back(dir.filename().string());
  }
  ANOCLIP_ASSIGN_OR_RETURN(auto names, SelectClasses(available, wanted, root));
  Dataset dataset;
  for (const auto& name : names) {
    ClassSet set{name, PromptClassName(name), true, {}};
    const fs::path class_dir = fs::path(root) / name;
    ANOCLIP_ASSIGN_OR_RETURN(auto defects, ListSorted(class_dir / "test", true));
    for (const auto& defect_dir : defects) {
      const std::string defect = defect_dir.filename().string();
      ANOCLIP_ASSIGN_OR_RETURN(auto images, ListSorted(defect_dir, false));
      for (const auto& image : images) {
        Sample sample{image.string(), "", defect != "good", defect};
        if (sample.anomalous) {
          sample.mask = (class_dir / "ground_truth" / defect / (image.stem().string() + "_mask.png")).string();
        }
        AddSample(std::move(sample), set, dataset.problems);
      }
    }
    if (set.samples.empty() && dataset.problems.empty()) {
      return absl::NotFoundError(absl::StrCat("no test images in ", (class_dir / "test").string()));
    }
    dataset.classes.push_back(std::move(set));
  }
  return dataset;
}

absl::StatusOr<Dataset> ReadVisa(const std::string& root, const std::vector<std::string>& wanted) {
  const std::string csv_path = (fs::path(root) / "split_csv" / "1cls.csv").string();
  ANOCLIP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(csv_path));
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipWhitespace());
  if (lines.empty()) return absl::InvalidArgumentError(absl::StrCat(csv_path, " is empty"));
  // Columns by header name: object, split, label, image, mask.
  std::map<std::string, size_t> column;
  const std::vector<std::string> header = absl::StrSplit(absl::StripAsciiWhitespace(lines[0]), ',');
  for (size_t i = 0; i < header.size(); ++i) column[std::string(absl::StripAsciiWhitespace(header[i]))] = i;
  for (const char* name : {"object", "split", "label", "image", "mask"}) {
    if (!column.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(csv_path, ": no column \"", name, "\" in the header"));
    }
  }
  std::map<std::string, std::vector<std::vector<std::string>>> rows;  // test rows per class
  for (size_t line = 1; line < lines.size(); ++line) {
    std::vector<std::string> fields = absl::StrSplit(absl::StripAsciiWhitespace(lines[line]), ',');
    if (fields.size() != header.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(csv_path, " line ", line + 1, ": ", fields.size(), " fields, the header has ", header.size()));
    }
    for (auto& field : fields) field = std::string(absl::StripAsciiWhitespace(field));
    if (fields[column["split"]] != "test") continue;
    const std::string& label = fields[column["label"]];
    if (label != "normal" && label != "anomaly") {
      return absl::InvalidArgumentError(
          absl::StrCat(csv_path, " line ", line + 1, ": label \"", label, "\" is neither normal nor anomaly"));
    }
    rows[fields[column["object"]]].push_back(std::move(fields));
  }
  std::vector<std::string> available;
  for (const auto& [name, unused] : rows) available.push_back(name);
  ANOCLIP_ASSIGN_OR_RETURN(auto names, SelectClasses(available, wanted, csv_path));
  Dataset dataset;
  for (const auto& name : names) {
    ClassSet set{name, PromptClassName(name), true, {}};
    for (const auto& fields : rows[name]) {
      const bool anomalous = fields[column["label"]] == "anomaly";
      Sample sample{(fs::path(root) / fields[column["image"]]).string(), "", anomalous,
                    anomalous ? "anomaly" : "good"};
      if (anomalous && !fields[column["mask"]].empty()) {
        sample.mask = (fs::path(root) / fields[column["mask"]]).string();
      }
      AddSample(std::move(sample), set, dataset.problems);
    }
    dataset.classes.push_back(std::move(set));
  }
  return dataset;
}

absl::StatusOr<Dataset> ReadFolder(const std::string& root, const std::vector<std::string>& wanted,
                                   const std::string& folder_class) {
  if (wanted.size() > 1) return absl::InvalidArgumentError("the folder layout holds one class; give one --classes name");
  std::string name = !wanted.empty() ? wanted[0] : folder_class;
  if (name.empty()) name = fs::path(root).lexically_normal().filename().string();
  if (name.empty() || name == ".") name = fs::absolute(root).lexically_normal().parent_path().filename().string();
  const fs::path masks = fs::path(root) / "masks";
  ClassSet set{name, PromptClassName(name), IsDirectory(masks), {}};
  Dataset dataset;
  for (const char* folder : {"good", "defect"}) {
    const fs::path dir = fs::path(root) / folder;
    if (!IsDirectory(dir)) return absl::NotFoundError(absl::StrCat("no directory ", dir.string()));
    ANOCLIP_ASSIGN_OR_RETURN(auto images, ListSorted(dir, false));
    for (const auto& image : images) {
      Sample sample{image.string(), "", std::string(folder) == "defect", folder};
      if (sample.anomalous && set.has_masks) {
        for (const std::string& candidate : {image.stem().string() + ".png", image.stem().string() + "_mask.png"}) {
          if (IsFile(masks / candidate)) sample.mask = (masks / candidate).string();
        }
      }
      AddSample(std::move(sample), set, dataset.problems);
    }
  }
  dataset.classes.push_back(std::move(set));
  return dataset;
}

}  // namespace

absl::StatusOr<Layout> ParseLayout(const std::string& name) {
  if (name == "mvtec") return Layout::kMvtec;
  if (name == "visa") return Layout::kVisa;
  if (name == "folder") return Layout::kFolder;
  return absl::InvalidArgumentError(absl::StrCat("unknown layout \"", name, "\"; expected mvtec, visa or folder"));
}

const char* LayoutName(Layout layout) {
  switch (layout) {
    case Layout::kMvtec:
      return "mvtec";
    case Layout::kVisa:
      return "visa";
    case Layout::kFolder:
      return "folder";
  }
  return "?";
}

std::string PromptClassName(const std::string& folder_name) {
  if (folder_name == "macaroni1" || folder_name == "macaroni2") return "macaroni";
  return absl::StrReplaceAll(folder_name, {{"_", " "}});
}

bool IsImageFileName(const std::string& path) {
  const std::string ext = absl::AsciiStrToLower(fs::path(path).extension().string());
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff";
}

absl::StatusOr<Dataset> ReadDataset(const std::string& root, Layout layout, const std::vector<std::string>& classes,
                                    const std::string& folder_class) {
  ANOCLIP_RETURN_IF_ERROR(CheckRoot(root));
  switch (layout) {
    case Layout::kMvtec:
      return ReadMvtec(root, classes);
    case Layout::kVisa:
      return ReadVisa(root, classes);
    case Layout::kFolder:
      return ReadFolder(root, classes, folder_class);
  }
  return absl::InvalidArgumentError("unknown layout");
}

}  // namespace anoclip::eval
