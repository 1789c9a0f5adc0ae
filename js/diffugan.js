// DiffuGAN frontend extension: give every DiffuGAN node a stage colour so a graph shows at a glance
// which stage each node belongs to (the keys are the nodes' categories; a test checks every category has one).
import { app } from "../../scripts/app.js";

const STAGE_COLORS = {
  "DiffuGAN/CLIP Style": ["#2f3b55", "#3c4d70"],
  "DiffuGAN/StyleGAN": ["#2d4a3e", "#3a5f50"],
  "DiffuGAN/GANformer": ["#4a2d37", "#5f3a47"],
  "DiffuGAN/VAR": ["#34503a", "#43684b"],
  "DiffuGAN/Importance": ["#553a2f", "#70503c"],
  "DiffuGAN/ControlNet": ["#4a2d4a", "#5f3a5f"],
  "DiffuGAN/DiT": ["#4a442d", "#5f573a"],
  "DiffuGAN/FiLM UNet": ["#2d454a", "#3a5a5f"],
};

app.registerExtension({
  name: "DiffuGAN.StageColors",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const colors = STAGE_COLORS[nodeData.category];
    if (!colors) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = colors[0];
      this.bgcolor = colors[1];
      return r;
    };
  },
});
