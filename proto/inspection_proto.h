// The inspection step's regions in anoclip.v1 messages and back: the one mapping the service
// (answering) and the client (drawing from an answer) share, so both mean the same by a region.
#pragma once

#include <vector>

#include <google/protobuf/repeated_field.h>

#include "anoclip/v1/anoclip.pb.h"
#include "inspection/regions.h"

namespace anoclip::inspection {

// Box, area, peak, mean and the contour as x0,y0,x1,y1,... appended to `out`.
void RegionsToProto(const std::vector<Region>& regions, google::protobuf::RepeatedPtrField<v1::Region>* out);

// The inverse; a trailing odd contour value is ignored.
std::vector<Region> RegionsFromProto(const google::protobuf::RepeatedPtrField<v1::Region>& regions);

}  // namespace anoclip::inspection
