# deliver/dsn.cmake: RFC 3464 delivery status notifications (dlv_dsn.c; pure: libc only).
# deliver/CMakeLists.txt includes this file (include(${CMAKE_CURRENT_LIST_DIR}/dsn.cmake)) and links
# ds_dlv_dsn into the delivery library, or adds dlv_dsn.c to its own sources instead.
if(NOT TARGET ds_dlv_dsn)
  add_library(ds_dlv_dsn STATIC ${CMAKE_CURRENT_LIST_DIR}/dlv_dsn.c)
  target_include_directories(ds_dlv_dsn PUBLIC ${CMAKE_CURRENT_LIST_DIR} ${CMAKE_SOURCE_DIR}/common)
endif()
