from glob import glob

from setuptools import find_packages, setup

package_name = "video_seg_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    package_data={package_name: ["resources/*.pt", "resources/*.md", "resources/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        (
            "share/" + package_name + "/config",
            glob("config/*.yaml")
            + glob("config/*.xml")
            + glob("config/*.rviz")
            + glob("config/*.json"),
        ),
        ("share/" + package_name + "/config/train", glob("config/train/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="video_seg_ros maintainers",
    maintainer_email="maintainers@video-seg-ros.invalid",
    description="Temporally consistent compact semantic segmentation node for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "video_seg_node = video_seg_ros.ros.executable:main",
            "video_seg_lifecycle_node = video_seg_ros.ros.executable:lifecycle_main",
            "video-seg-import = video_seg_ros.tools.import_weights:main",
            "video-seg-eval = video_seg_ros.tools.evaluate:main",
            "video-seg-make-bag = video_seg_ros.tools.make_bag:main",
            "video-seg-play = video_seg_ros.tools.play_bag:main",
            "video-seg-record = video_seg_ros.tools.record:main",
            "video-seg-demo = video_seg_ros.tools.demo:main",
            "video-seg-generate = video_seg_ros.tools.generate:main",
            "video-seg-train = video_seg_ros.tools.train:main",
            "video-seg-export = video_seg_ros.tools.export:main",
            "video-seg-adapt = video_seg_ros.tools.adapt:main",
            "video-seg-interpolate = video_seg_ros.tools.interpolate:main",
        ],
    },
)
