// NumPy .npy files (format versions 1.0, 2.0 and 3.0), for tensors exchanged with Python: CAM outputs,
// golden fixtures. Little-endian, C-order arrays of F32, F64, F16, I64, I32, I8, U8 and bool only;
// anything else (big-endian, Fortran order, structured or object dtypes) is a clear error naming the file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace camrt {

HostTensor read_npy(const std::string& path);
// The same for a file already in memory; source_name is what error messages call it.
HostTensor parse_npy(const uint8_t* data, size_t size, const std::string& source_name);
// Writes a version 1.0 file (2.0 if the header would not fit in 64 KiB), atomically.
void write_npy(const std::string& path, const HostTensor& tensor);

}  // namespace camrt
