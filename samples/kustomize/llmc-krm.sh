#!/bin/sh
# kustomize runs this with the ResourceList on stdin; llmc must be on PATH.
exec llmc krm
