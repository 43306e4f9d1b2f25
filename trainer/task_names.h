// The names `task.name` may take: the tasks make_task (trainer/task.h) builds.
#pragma once
#include <string>
#include <vector>

namespace anvil {

const std::vector<std::string>& task_names();

}  // namespace anvil
