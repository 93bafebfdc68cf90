# test_install: installs the built camrt into a temporary prefix, builds tools/examples against it with
# find_package(camrt), converts a fixture model with the installed camrt command, and runs the example on a
# real photo. Invoked by ctest with -DBUILD_DIR -DSOURCE_DIR -DWORK_DIR.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tools/examples -B ${WORK_DIR}/example -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix
    -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/example)
run(${WORK_DIR}/prefix/bin/camrt convert ${SOURCE_DIR}/tests/fixtures/models/resnet18/model.onnx -o ${WORK_DIR}/model)
execute_process(COMMAND ${WORK_DIR}/example/explain_image ${WORK_DIR}/model/model.json
                        ${SOURCE_DIR}/tests/fixtures/image/chelsea.jpg
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "Grad-CAM peak at")
  message(FATAL_ERROR "example failed (${rc}): ${out}\n${err}")
endif()
message(STATUS "${out}")
file(REMOVE_RECURSE ${WORK_DIR})
