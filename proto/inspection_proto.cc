#include "proto/inspection_proto.h"

namespace anoclip::inspection {

void RegionsToProto(const std::vector<Region>& regions, google::protobuf::RepeatedPtrField<v1::Region>* out) {
  for (const auto& region : regions) {
    auto* message = out->Add();
    message->set_x(region.x);
    message->set_y(region.y);
    message->set_width(region.width);
    message->set_height(region.height);
    message->set_area(region.area);
    message->set_peak(region.peak);
    message->set_mean(region.mean);
    for (const auto& point : region.contour) {
      message->add_contour(point.x);
      message->add_contour(point.y);
    }
  }
}

std::vector<Region> RegionsFromProto(const google::protobuf::RepeatedPtrField<v1::Region>& regions) {
  std::vector<Region> out;
  for (const auto& message : regions) {
    Region region;
    region.x = message.x();
    region.y = message.y();
    region.width = message.width();
    region.height = message.height();
    region.area = message.area();
    region.peak = message.peak();
    region.mean = message.mean();
    for (int i = 0; i + 1 < message.contour_size(); i += 2) {
      region.contour.emplace_back(message.contour(i), message.contour(i + 1));
    }
    out.push_back(std::move(region));
  }
  return out;
}

}  // namespace anoclip::inspection
