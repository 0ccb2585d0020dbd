// Labelled test images in the layouts people have them in:
//   mvtec   ROOT/<class>/test/<defect>/*.png, masks ROOT/<class>/ground_truth/<defect>/<stem>_mask.png;
//           `good` is the defect-free folder and has no masks (MVTec AD);
//   visa    ROOT/split_csv/1cls.csv (object,split,label,image,mask; the `test` rows), image and mask
//           paths relative to ROOT: <class>/Data/Images/{Normal,Anomaly}, <class>/Data/Masks/Anomaly (VisA);
//   folder  ROOT/good/*, ROOT/defect/*, optional ROOT/masks/<stem>.png or <stem>_mask.png: one class,
//           a user's own parts. Without masks/ only image metrics exist.
// Image files: png, jpg, jpeg, bmp, tif, tiff (any case). Listing checks that every file exists;
// each missing one is a Problem naming it (the caller reports it; nothing is dropped silently).
// Torch-free, stateless.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace anoclip::eval {

enum class Layout { kMvtec, kVisa, kFolder };

absl::StatusOr<Layout> ParseLayout(const std::string& name);
const char* LayoutName(Layout layout);

struct Sample {
  std::string image;   // path
  std::string mask;    // path; empty for a defect-free image (an all-zero mask) or without masks
  bool anomalous = false;
  std::string defect;  // "good" for defect-free images, else the defect type
};

struct ClassSet {
  std::string name;          // the dataset's folder name ("metal_nut", "macaroni1")
  std::string prompt_class;  // the name the prompts use ("metal nut", "macaroni")
  bool has_masks = true;     // pixel metrics are possible
  std::vector<Sample> samples;
};

// A file that could not be used, with why.
struct Problem {
  std::string file;
  std::string error;
};

struct Dataset {
  std::vector<ClassSet> classes;
  std::vector<Problem> problems;  // missing files; their samples are not in `classes`
};

// Folder names to prompt class names (docs/algorithm.md §8): '_' to ' ', macaroni1/macaroni2 to macaroni.
std::string PromptClassName(const std::string& folder_name);

// `classes`: the classes to read (empty: all, sorted by name); a named class that is absent is an
// error. `folder_class`: the folder layout's class name (empty: ROOT's own name).
absl::StatusOr<Dataset> ReadDataset(const std::string& root, Layout layout, const std::vector<std::string>& classes,
                                    const std::string& folder_class);

bool IsImageFileName(const std::string& path);

}  // namespace anoclip::eval
