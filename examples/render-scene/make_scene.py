# The demo scene for `kind: render`: a short animation built from code, so nothing binary is
# checked in. Run it with the Blender that providers run:
#   blender -b --factory-startup -noaudio --python examples/render-scene/make_scene.py -- examples/render-scene/scene.blend
# Glass, emission, a procedural texture and smooth-shaded meshes under a sun and a moving camera;
# 16 frames at 8 fps. Cycles on the CPU, denoising off (Debian's build has no denoiser).
import math
import sys

import bpy

out = sys.argv[sys.argv.index("--") + 1] if "--" in sys.argv else "scene.blend"

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 16
scene.cycles.use_denoising = False
scene.render.resolution_x = 320
scene.render.resolution_y = 180
scene.render.fps = 8
scene.frame_start = 1
scene.frame_end = 16

world = bpy.data.worlds.new("sky")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.05, 0.07, 0.12, 1.0)
world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
scene.world = world


def material(name, build):
    m = bpy.data.materials.new(name)
    m.use_nodes = True
    nodes = m.node_tree.nodes
    links = m.node_tree.links
    bsdf = nodes["Principled BSDF"]
    build(nodes, links, bsdf, m)
    return m


def checker(nodes, links, bsdf, m):
    tex = nodes.new("ShaderNodeTexChecker")
    tex.inputs["Scale"].default_value = 8.0
    tex.inputs["Color1"].default_value = (0.8, 0.75, 0.6, 1.0)
    tex.inputs["Color2"].default_value = (0.15, 0.2, 0.25, 1.0)
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])


def glass(nodes, links, bsdf, m):
    out = nodes["Material Output"]
    nodes.remove(bsdf)
    g = nodes.new("ShaderNodeBsdfGlass")
    g.inputs["IOR"].default_value = 1.45
    links.new(g.outputs["BSDF"], out.inputs["Surface"])


def emission(nodes, links, bsdf, m):
    out = nodes["Material Output"]
    nodes.remove(bsdf)
    e = nodes.new("ShaderNodeEmission")
    e.inputs["Color"].default_value = (1.0, 0.45, 0.1, 1.0)
    e.inputs["Strength"].default_value = 6.0
    links.new(e.outputs["Emission"], out.inputs["Surface"])


def clay(nodes, links, bsdf, m):
    bsdf.inputs["Base Color"].default_value = (0.2, 0.45, 0.8, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.35


bpy.ops.mesh.primitive_plane_add(size=12)
bpy.context.object.data.materials.append(material("floor", checker))

bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, location=(0, 0, 1), segments=48, ring_count=24)
bpy.ops.object.shade_smooth()
bpy.context.object.data.materials.append(material("glass", glass))

bpy.ops.mesh.primitive_ico_sphere_add(radius=0.45, location=(2.0, 0.6, 0.45), subdivisions=3)
bpy.ops.object.shade_smooth()
lamp_ball = bpy.context.object
lamp_ball.data.materials.append(material("ember", emission))

bpy.ops.mesh.primitive_torus_add(location=(-2.0, -0.4, 0.5), major_radius=0.7, minor_radius=0.25)
bpy.ops.object.shade_smooth()
torus = bpy.context.object
torus.data.materials.append(material("clay", clay))

# The ember rises and the torus turns over the shot.
for frame, z, angle in ((1, 0.45, 0.0), (16, 1.6, math.pi)):
    lamp_ball.location.z = z
    lamp_ball.keyframe_insert("location", frame=frame)
    torus.rotation_euler = (angle / 2, 0.0, angle)
    torus.keyframe_insert("rotation_euler", frame=frame)

bpy.ops.object.light_add(type="SUN", rotation=(0.7, 0.2, 0.6))
bpy.context.object.data.energy = 3.0

# The camera circles a quarter turn around the glass sphere.
bpy.ops.object.empty_add(location=(0, 0, 0.8))
pivot = bpy.context.object
bpy.ops.object.camera_add(location=(0, -7.5, 3.2), rotation=(math.radians(72), 0, 0))
cam = bpy.context.object
cam.parent = pivot
scene.camera = cam
for frame, angle in ((1, -math.pi / 8), (16, math.pi / 8)):
    pivot.rotation_euler = (0, 0, angle)
    pivot.keyframe_insert("rotation_euler", frame=frame)

bpy.ops.wm.save_as_mainfile(filepath=out, compress=False)
print(f"wrote {out}")
