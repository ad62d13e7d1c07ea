// SPDX-License-Identifier: MIT
// A stand-in for ENS's BaseRegistrarImplementation: an ERC-721 of .eth second-level names,
// token id = uint256(labelhash). ownerOf reverts once a name has expired (grace period
// included), like the real one. The controller (the deployer) registers names and may set an
// expiry directly (tests need names that expired long ago). Test chain only.
pragma solidity ^0.8.20;

interface IRegistry {
    function setSubnodeOwner(bytes32 node, bytes32 label, address owner) external returns (bytes32);
}

contract BaseRegistrar {
    IRegistry public immutable ens;
    bytes32 public immutable baseNode;
    address public immutable controller;

    mapping(uint256 => uint256) private expiries;
    mapping(uint256 => address) private owners;
    mapping(address => mapping(address => bool)) private operators;

    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);
    event ApprovalForAll(address indexed owner, address indexed operator, bool approved);
    event NameRegistered(uint256 indexed id, address indexed owner, uint256 expires);

    constructor(IRegistry ens_, bytes32 baseNode_) {
        ens = ens_;
        baseNode = baseNode_;
        controller = msg.sender;
    }

    modifier onlyController() {
        require(msg.sender == controller, "BaseRegistrar: not the controller");
        _;
    }

    modifier live(uint256 id) {
        require(expiries[id] > block.timestamp, "BaseRegistrar: name expired or not registered");
        _;
    }

    function register(uint256 id, address owner, uint256 duration)
        external onlyController returns (uint256)
    {
        uint256 expires = block.timestamp + duration;
        expiries[id] = expires;
        _transfer(owners[id], owner, id);
        ens.setSubnodeOwner(baseNode, bytes32(id), owner);
        emit NameRegistered(id, owner, expires);
        return expires;
    }

    function setExpiry(uint256 id, uint256 expires) external onlyController {
        expiries[id] = expires;
    }

    function nameExpires(uint256 id) external view returns (uint256) {
        return expiries[id];
    }

    function available(uint256 id) external view returns (bool) {
        return expiries[id] < block.timestamp;
    }

    function ownerOf(uint256 id) external view live(id) returns (address) {
        address owner = owners[id];
        require(owner != address(0), "BaseRegistrar: no owner");
        return owner;
    }

    function transferFrom(address from, address to, uint256 id) public live(id) {
        require(owners[id] == from, "BaseRegistrar: from is not the owner");
        require(msg.sender == from || operators[from][msg.sender], "BaseRegistrar: not authorised");
        require(to != address(0), "BaseRegistrar: transfer to the zero address");
        _transfer(from, to, id);
    }

    function safeTransferFrom(address from, address to, uint256 id) external {
        transferFrom(from, to, id);
    }

    // Sets the registry owner of the name (the "manager") as its token owner may.
    function reclaim(uint256 id, address owner) external live(id) {
        require(msg.sender == owners[id] || operators[owners[id]][msg.sender], "BaseRegistrar: not authorised");
        ens.setSubnodeOwner(baseNode, bytes32(id), owner);
    }

    function setApprovalForAll(address operator, bool approved) external {
        operators[msg.sender][operator] = approved;
        emit ApprovalForAll(msg.sender, operator, approved);
    }

    function isApprovedForAll(address owner, address operator) external view returns (bool) {
        return operators[owner][operator];
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7 || interfaceId == 0x80ac58cd;
    }

    function _transfer(address from, address to, uint256 id) private {
        owners[id] = to;
        emit Transfer(from, to, id);
    }
}
