// An evaluation's results for people and programs: the Markdown table in the paper's column
// order (pixel AUROC, F1max, PRO | image AUROC, F1max, AUPR; percent, one decimal), JSON, CSV,
// and a self-contained report.html (tables, ROC and PR curves per class as inline SVG, overlays
// as data: URIs, the settings) that needs no network. Torch-free, stateless.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/dataset.h"
#include "eval/evaluation.h"

namespace anoclip::eval {

struct OverlayImage {
  std::string class_name;
  std::string image;      // the source image's path
  bool anomalous = false;
  std::string png;        // encoded overlay
};

struct EvaluationReport {
  nlohmann::ordered_json settings;  // the run's settings (model id included), shown as given
  std::vector<ClassEvaluation> classes;
  std::vector<Problem> failures;    // files that could not be used
  std::string operating_rule;       // "" when none, else e.g. "calibration" or "threshold 0.5"
  nlohmann::ordered_json timings;   // seconds per stage
  std::vector<OverlayImage> overlays;
};

std::string MarkdownTables(const EvaluationReport& report);
nlohmann::ordered_json ReportJson(const EvaluationReport& report);
std::string ReportCsv(const EvaluationReport& report);
std::string ReportHtml(const EvaluationReport& report);

}  // namespace anoclip::eval
