// Status propagation helpers: absl::Status inside, converted to gRPC codes only at the edge.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ANOCLIP_CONCAT_INNER(a, b) a##b
#define ANOCLIP_CONCAT(a, b) ANOCLIP_CONCAT_INNER(a, b)

#define ANOCLIP_RETURN_IF_ERROR(expr)            \
  do {                                           \
    ::absl::Status _anoclip_status = (expr);     \
    if (!_anoclip_status.ok()) return _anoclip_status; \
  } while (0)

#define ANOCLIP_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

#define ANOCLIP_ASSIGN_OR_RETURN(lhs, expr) \
  ANOCLIP_ASSIGN_OR_RETURN_IMPL(ANOCLIP_CONCAT(_anoclip_statusor_, __LINE__), lhs, expr)
