#!/bin/bash
# Stand-in for the AIB quick start's customizeScript2.sh (the checksum-verified one).
set -e
echo "customizeScript2 ran" | sudo tee /buildScripts/customizeScript2.done
