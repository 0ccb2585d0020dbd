#include "eval/report.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace anoclip::eval {
namespace {

using Value = std::optional<double>;

std::string Percent(Value value) { return value ? absl::StrFormat("%.1f", 100 * *value) : "n/a"; }

nlohmann::ordered_json JsonValue(Value value) { return value ? nlohmann::ordered_json(*value) : nullptr; }

std::string CsvValue(Value value) { return value ? absl::StrFormat("%.9g", *value) : ""; }

Value Point(const std::optional<OperatingPoint>& point, Value (OperatingPoint::*get)() const) {
  return point ? ((*point).*get)() : std::nullopt;
}

// The paper's columns, then the rest of §8 and the operating point, in one order for every format.
std::vector<std::pair<std::string, Value>> ClassValues(const ClassEvaluation& c) {
  return {{"pixel_auroc", c.pixel.auroc},
          {"pixel_f1max", c.pixel.f1max},
          {"pro", c.pro},
          {"image_auroc", c.image.auroc},
          {"image_f1max", c.image.f1max},
          {"image_aupr", c.image.aupr},
          {"pixel_ap", c.pixel.ap},
          {"image_ap", c.image.ap},
          {"image_precision", Point(c.image_point, &OperatingPoint::precision)},
          {"image_recall", Point(c.image_point, &OperatingPoint::recall)},
          {"image_f1", Point(c.image_point, &OperatingPoint::f1)},
          {"pixel_precision", Point(c.pixel_point, &OperatingPoint::precision)},
          {"pixel_recall", Point(c.pixel_point, &OperatingPoint::recall)},
          {"pixel_f1", Point(c.pixel_point, &OperatingPoint::f1)}};
}

std::vector<std::pair<std::string, Value>> MeanValues(const MeanMetrics& m) {
  return {{"pixel_auroc", m.pixel_auroc},         {"pixel_f1max", m.pixel_f1max},
          {"pro", m.pro},                         {"image_auroc", m.image_auroc},
          {"image_f1max", m.image_f1max},         {"image_aupr", m.image_aupr},
          {"pixel_ap", m.pixel_ap},               {"image_ap", m.image_ap},
          {"image_precision", m.image_precision}, {"image_recall", m.image_recall},
          {"image_f1", m.image_f1},               {"pixel_precision", m.pixel_precision},
          {"pixel_recall", m.pixel_recall},       {"pixel_f1", m.pixel_f1}};
}

constexpr size_t kPaperColumns = 6;
constexpr size_t kFirstOperatingColumn = 8;
const char* const kTitles[] = {"pixel AUROC", "pixel F1max", "PRO",       "image AUROC", "image F1max",
                               "image AUPR",  "pixel AP",    "image AP",  "precision",   "recall",
                               "F1",          "precision",   "recall",    "F1"};

struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

Table MetricsTable(const EvaluationReport& report) {
  Table table;
  table.header = {"class"};
  for (size_t i = 0; i < kPaperColumns; ++i) table.header.push_back(kTitles[i]);
  table.header.push_back("images");
  for (const auto& c : report.classes) {
    std::vector<std::string> row = {c.name};
    const auto values = ClassValues(c);
    for (size_t i = 0; i < kPaperColumns; ++i) row.push_back(Percent(values[i].second));
    row.push_back(absl::StrCat(c.images, " (", c.anomalous, " defective)"));
    table.rows.push_back(std::move(row));
  }
  std::vector<std::string> mean = {"mean"};
  const auto values = MeanValues(MeanOverClasses(report.classes));
  for (size_t i = 0; i < kPaperColumns; ++i) mean.push_back(Percent(values[i].second));
  int64_t images = 0;
  for (const auto& c : report.classes) images += c.images;
  mean.push_back(absl::StrCat(images));
  table.rows.push_back(std::move(mean));
  return table;
}

Table OperatingTable(const EvaluationReport& report) {
  Table table;
  table.header = {"class", "image precision", "image recall", "image F1", "pixel precision", "pixel recall",
                  "pixel F1"};
  auto add = [&](const std::string& name, const std::vector<std::pair<std::string, Value>>& values) {
    std::vector<std::string> row = {name};
    for (size_t i = kFirstOperatingColumn; i < values.size(); ++i) row.push_back(Percent(values[i].second));
    table.rows.push_back(std::move(row));
  };
  for (const auto& c : report.classes) add(c.name, ClassValues(c));
  add("mean", MeanValues(MeanOverClasses(report.classes)));
  return table;
}

std::string Markdown(const Table& table) {
  std::string out = absl::StrCat("| ", absl::StrJoin(table.header, " | "), " |\n|");
  for (size_t i = 0; i < table.header.size(); ++i) out += i == 0 ? " --- |" : " ---: |";
  out += "\n";
  for (const auto& row : table.rows) absl::StrAppend(&out, "| ", absl::StrJoin(row, " | "), " |\n");
  return out;
}

std::string Escape(const std::string& text) {
  return absl::StrReplaceAll(text, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

std::string Html(const Table& table) {
  std::string out = "<table><tr>";
  for (const auto& h : table.header) absl::StrAppend(&out, "<th>", Escape(h), "</th>");
  out += "</tr>\n";
  for (size_t r = 0; r < table.rows.size(); ++r) {
    out += r + 1 == table.rows.size() ? "<tr class=\"mean\">" : "<tr>";
    for (const auto& cell : table.rows[r]) absl::StrAppend(&out, "<td>", Escape(cell), "</td>");
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

// One plot of curves in [0,1]²: axes, grid, a polyline per curve, a legend.
struct Curve {
  std::string label, colour;
  const std::vector<CurvePoint>* points;
};

std::string Svg(const std::string& title, const std::string& x_label, const std::string& y_label,
                const std::vector<Curve>& curves) {
  constexpr int kSize = 240, kLeft = 44, kTop = 24, kWidth = kSize + kLeft + 16, kHeight = kSize + kTop + 40;
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"sans-serif\" font-size=\"11\"><rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>"
      "<text x=\"%d\" y=\"15\" font-weight=\"bold\">%s</text>",
      kWidth, kHeight, kWidth, kHeight, kLeft, Escape(title));
  for (int i = 0; i <= 4; ++i) {
    const double t = i / 4.0;
    const int x = kLeft + static_cast<int>(t * kSize), y = kTop + kSize - static_cast<int>(t * kSize);
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#ddd\"/>"
                          "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#ddd\"/>"
                          "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.2g</text>"
                          "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.2g</text>",
                          x, kTop, x, kTop + kSize, kLeft, y, kLeft + kSize, y, x, kTop + kSize + 14, t, kLeft - 4,
                          y + 4, t);
  }
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>"
                        "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>"
                        "<text x=\"12\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 12 %d)\">%s</text>",
                        kLeft, kTop, kSize, kSize, kLeft + kSize / 2, kTop + kSize + 30, Escape(x_label),
                        kTop + kSize / 2, kTop + kSize / 2, Escape(y_label));
  int legend = 0;
  for (const auto& curve : curves) {
    if (curve.points->empty()) continue;
    std::string points;
    for (const auto& p : *curve.points) {
      absl::StrAppendFormat(&points, "%.2f,%.2f ", kLeft + p.x * kSize, kTop + kSize - p.y * kSize);
    }
    absl::StrAppendFormat(&svg,
                          "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>"
                          "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"%s\"/>"
                          "<text x=\"%d\" y=\"%d\">%s</text>",
                          curve.colour, points, kLeft + 8, kTop + 8 + 14 * legend, curve.colour, kLeft + 22,
                          kTop + 17 + 14 * legend, Escape(curve.label));
    ++legend;
  }
  return svg + "</svg>";
}

}  // namespace

std::string MarkdownTables(const EvaluationReport& report) {
  std::string out = Markdown(MetricsTable(report));
  if (!report.operating_rule.empty()) {
    absl::StrAppend(&out, "\nOperating point (", report.operating_rule, "):\n\n", Markdown(OperatingTable(report)));
  }
  return out;
}

nlohmann::ordered_json ReportJson(const EvaluationReport& report) {
  nlohmann::ordered_json json;
  json["settings"] = report.settings;
  json["classes"] = nlohmann::ordered_json::array();
  for (const auto& c : report.classes) {
    nlohmann::ordered_json entry = {{"class", c.name},        {"prompt_class", c.prompt_class},
                                    {"images", c.images},     {"anomalous", c.anomalous},
                                    {"has_masks", c.has_masks}};
    for (const auto& [key, value] : ClassValues(c)) entry[key] = JsonValue(value);
    auto counts = [](const std::optional<OperatingPoint>& p) -> nlohmann::ordered_json {
      if (!p) return nullptr;
      return {{"tp", p->true_positives}, {"fp", p->false_positives}, {"fn", p->false_negatives},
              {"tn", p->true_negatives}};
    };
    entry["image_counts"] = counts(c.image_point);
    entry["pixel_counts"] = counts(c.pixel_point);
    json["classes"].push_back(std::move(entry));
  }
  nlohmann::ordered_json mean;
  for (const auto& [key, value] : MeanValues(MeanOverClasses(report.classes))) mean[key] = JsonValue(value);
  json["mean"] = mean;
  json["operating_rule"] = report.operating_rule.empty() ? nlohmann::ordered_json(nullptr)
                                                         : nlohmann::ordered_json(report.operating_rule);
  json["failures"] = nlohmann::ordered_json::array();
  for (const auto& f : report.failures) json["failures"].push_back({{"file", f.file}, {"error", f.error}});
  json["timings_s"] = report.timings;
  return json;
}

std::string ReportCsv(const EvaluationReport& report) {
  std::vector<std::string> header = {"class", "images", "anomalous"};
  for (const auto& [key, value] : MeanValues({})) header.push_back(key);
  std::string out = absl::StrJoin(header, ",") + "\n";
  auto quote = [](const std::string& text) {
    return text.find_first_of(",\"\n") == std::string::npos ? text
                                                            : "\"" + absl::StrReplaceAll(text, {{"\"", "\"\""}}) + "\"";
  };
  int64_t images = 0, anomalous = 0;
  for (const auto& c : report.classes) {
    std::vector<std::string> row = {quote(c.name), absl::StrCat(c.images), absl::StrCat(c.anomalous)};
    for (const auto& [key, value] : ClassValues(c)) row.push_back(CsvValue(value));
    absl::StrAppend(&out, absl::StrJoin(row, ","), "\n");
    images += c.images;
    anomalous += c.anomalous;
  }
  std::vector<std::string> row = {"mean", absl::StrCat(images), absl::StrCat(anomalous)};
  for (const auto& [key, value] : MeanValues(MeanOverClasses(report.classes))) row.push_back(CsvValue(value));
  return out + absl::StrJoin(row, ",") + "\n";
}

std::string ReportHtml(const EvaluationReport& report) {
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>anoclip evaluation</title>\n"
      "<style>body{font-family:sans-serif;margin:24px;color:#222;background:#fff}"
      "table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #bbb;padding:3px 8px;"
      "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#e8eef6}"
      "tr.mean td{font-weight:bold;background:#f4f4f4}.plots svg{margin-right:12px}"
      ".overlays figure{display:inline-block;margin:4px 8px 4px 0;font-size:11px;max-width:260px;"
      "word-break:break-all}.overlays img{width:240px;image-rendering:pixelated;border:1px solid #999}"
      ".failures{color:#a00}</style></head><body>\n<h1>anoclip evaluation</h1>\n";
  absl::StrAppend(&html, "<h2>Metrics (percent)</h2>\n", Html(MetricsTable(report)));
  if (!report.operating_rule.empty()) {
    absl::StrAppend(&html, "<h2>Operating point: ", Escape(report.operating_rule), "</h2>\n",
                    Html(OperatingTable(report)));
  }
  if (!report.failures.empty()) {
    absl::StrAppend(&html, "<h2 class=\"failures\">", report.failures.size(),
                    " files could not be used</h2>\n<ul class=\"failures\">");
    for (const auto& f : report.failures) absl::StrAppend(&html, "<li>", Escape(f.file), ": ", Escape(f.error), "</li>");
    html += "</ul>\n";
  }
  for (const auto& c : report.classes) {
    absl::StrAppend(&html, "<h2>", Escape(c.name), "</h2>\n<div class=\"plots\">",
                    Svg("ROC", "false positive rate", "true positive rate",
                        {{"image", "#1f77b4", &c.image_roc}, {"pixel", "#d62728", &c.pixel_roc}}),
                    Svg("Precision-recall", "recall", "precision",
                        {{"image", "#1f77b4", &c.image_pr}, {"pixel", "#d62728", &c.pixel_pr}}),
                    "</div>\n<div class=\"overlays\">");
    for (const auto& overlay : report.overlays) {
      if (overlay.class_name != c.name) continue;
      absl::StrAppend(&html, "<figure><img alt=\"overlay\" src=\"data:image/png;base64,",
                      absl::Base64Escape(overlay.png), "\"><figcaption>", overlay.anomalous ? "defect: " : "good: ",
                      Escape(overlay.image), "</figcaption></figure>");
    }
    html += "</div>\n";
  }
  absl::StrAppend(&html,
                  "<p>Overlays: the anomaly map in JET colours over the model's input, the ground-truth "
                  "defect outlined in green, regions above the operating threshold in white.</p>\n"
                  "<h2>Settings</h2>\n<pre>",
                  Escape(report.settings.dump(2)), "</pre>\n<h2>Timings (seconds)</h2>\n<pre>",
                  Escape(report.timings.dump(2)), "</pre>\n</body></html>\n");
  return html;
}

}  // namespace anoclip::eval
